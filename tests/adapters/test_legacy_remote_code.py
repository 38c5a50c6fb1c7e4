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
