"""Remote code written for Transformers 4.x (tests/models/legacy: written here, in the old style)
loads with trust_remote_code=True and gives the tokens its own code gives; what still fails to
import fails with one message naming the file and line."""

import json
import shutil
from pathlib import Path

import pytest

from anymodel import LLM
from tests.models.tinyold import build_tinyold, tinyold_as_built
from tests.reference import argmax_greedy, llm_greedy


@pytest.fixture(scope="module")
def tinyold(tmp_path_factory) -> Path:
    return build_tinyold(tmp_path_factory.mktemp("tinyold"))


def test_old_remote_code_is_token_identical(tinyold):
    llm = LLM(str(tinyold), trust_remote_code=True, dtype="float32", num_kv_blocks=64)
    prompts = [[1, 17, 90, 41, 7], [1, 200, 5, 5, 64, 33, 12, 9, 100]]
    model = tinyold_as_built(tinyold)
    assert llm_greedy(llm, prompts, 6, ignore_eos=False) == [argmax_greedy(model, p, 6) for p in prompts]
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


def _count_decode_batches(model) -> list[int]:
    """Wrap the compat adapter's HF base forward: the batch size of every call on a one-token input."""
    sizes: list[int] = []
    base_forward = model.model.forward

    def counted(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] == 1:
            sizes.append(ids.shape[0])
        return base_forward(*args, **kwargs)

    model.model.forward = counted
    return sizes


# several prompts of different lengths, run together: their decode rows share forwards
BATCH_PROMPTS = [[1, 17, 90, 41, 7], [1, 200, 5, 5, 64, 33, 12, 9, 100], [3, 4], [1] + list(range(20, 45))]


@pytest.mark.parametrize("variant", ["tinyold", "tinyepoch", "tinytuple"])
def test_old_remote_code_decode_steps_batched(tmp_path, variant, caplog):
    """StableLM-epoch style code (needs the 2-D attention_mask over past + new tokens) and code with
    legacy tuple caches give their own tokens, with every step's decode rows in one forward."""
    path = build_tinyold(tmp_path, variant)
    with caplog.at_level("INFO", logger="anymodel"):
        llm = LLM(str(path), trust_remote_code=True, dtype="float32", num_kv_blocks=64)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("anymodel: compat for"))
    assert "no paged KV pool" in line and "_supports_attention_backend" in line, line
    assert llm.apply_model(lambda m: (type(m).__name__, m.batch_decode)) == [("CompatCausalLM", True)]
    sizes = llm.apply_model(_count_decode_batches)[0]
    model = tinyold_as_built(path)
    n = 6
    assert llm_greedy(llm, BATCH_PROMPTS, n) == [argmax_greedy(model, p, n) for p in BATCH_PROMPTS]
    assert sizes.count(len(BATCH_PROMPTS)) >= n - 1, sizes  # all four decode rows in one forward
    assert llm.apply_model(lambda m: m.batch_decode) == [True]  # no fallback to one request at a time
    assert llm.apply_model(lambda m: len(m.caches)) == [0]


def test_compat_model_holds_no_paged_kv(tinyold):
    """A compat-path model keeps its own HF caches: the workers allocate no paged KV tensors."""
    llm = LLM(str(tinyold), trust_remote_code=True, dtype="float32")
    assert llm.collective_rpc(lambda w: len(w.runner.kv_caches)) == [0]
    llm_greedy(llm, BATCH_PROMPTS[:2], 2)
    assert llm.collective_rpc(lambda w: len(w.runner.kv_caches)) == [0]
