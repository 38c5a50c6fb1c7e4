"""Remote code written for Transformers 4.x (tests/models/legacy: written here, in the old style)
loads with trust_remote_code=True and gives the tokens its own code gives; what still fails to
import fails with one message naming the file and line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anymodel import LLM, SamplingParams
from anymodel.adapters.legacy_api import legacy_transformers_api, patch_legacy_classes
from tests.models.tokenizer import save_tokenizer

LEGACY_DIR = Path(__file__).parents[1] / "models" / "legacy"
AUTO_MAP = {"AutoConfig": "configuration_tinyold.TinyOldConfig",
            "AutoModelForCausalLM": "modeling_tinyold.TinyOldForCausalLM"}


def _classes():
    with legacy_transformers_api():
        from tests.models.legacy.configuration_tinyold import TinyOldConfig
        from tests.models.legacy.modeling_tinyold import TinyOldForCausalLM
    patch_legacy_classes(TinyOldConfig, TinyOldForCausalLM)
    return TinyOldConfig, TinyOldForCausalLM


def build_tinyold(out: Path) -> Path:
    config_cls, model_cls = _classes()
    torch.manual_seed(0)
    model = model_cls(config_cls())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    config = model.config.to_dict()
    config.update(auto_map=AUTO_MAP, architectures=["TinyOldForCausalLM"])
    (out / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, out / "model.safetensors")
    for source in LEGACY_DIR.glob("*_tinyold.py"):
        shutil.copy(source, out / source.name)
    save_tokenizer(out)
    return out


def reference_greedy(model_dir: Path, prompt: list[int], steps: int) -> list[int]:
    """The model's own code, built for real (its buffers computed by __init__), full recompute per token."""
    config_cls, model_cls = _classes()
    model = model_cls(config_cls(**{k: v for k, v in json.loads((model_dir / "config.json").read_text()).items()
                                    if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}))
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
    model.tie_weights()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def tinyold(tmp_path_factory) -> Path:
    return build_tinyold(tmp_path_factory.mktemp("tinyold"))


def test_old_remote_code_is_token_identical(tinyold):
    llm = LLM(str(tinyold), trust_remote_code=True, dtype="float32", num_kv_blocks=64)
    prompts = [[1, 17, 90, 41, 7], [1, 200, 5, 5, 64, 33, 12, 9, 100]]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=6),
                        use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == reference_greedy(tinyold, prompt, 6)
    with pytest.raises(ImportError):  # the shims were installed for the load only
        exec("from transformers.modeling_attn_mask_utils import AttentionMaskConverter")


def test_import_of_a_removed_api_fails_with_file_and_line(tmp_path, tinyold):
    model_dir = Path(shutil.copytree(tinyold, tmp_path / "broken"))
    code = model_dir / "modeling_tinyold.py"
    code.write_text(code.read_text().replace("import math\n", "import math\nfrom transformers.cache_utils import SinkCache\n"))
    with pytest.raises(ValueError) as info:
        LLM(str(model_dir), trust_remote_code=True)
    message = str(info.value)
    assert "modeling_tinyold.py:" in message and "SinkCache" in message and "Transformers 5" in message


def test_in_library_model_type_is_offered(tmp_path, tinyold):
    model_dir = Path(shutil.copytree(tinyold, tmp_path / "llama_typed"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    (model_dir / "configuration_tinyold.py").write_text(
        (model_dir / "configuration_tinyold.py").read_text().replace('"tinyold"', '"llama"'))
    code = model_dir / "modeling_tinyold.py"
    code.write_text(code.read_text().replace("import math\n", "import math\nfrom transformers import NoSuchThing\n"))
    with pytest.raises(ValueError, match="trust_remote_code=False"):
        LLM(str(model_dir), trust_remote_code=True)
