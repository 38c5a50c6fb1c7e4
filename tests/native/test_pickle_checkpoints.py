"""A pytorch_model.bin that weights_only refuses (it holds more than tensors) is never unpickled:
every model build path ends in one ValueError naming the file and the safetensors remedy, and the
CLI prints it as one line. A weights-only pickle still loads."""

import argparse
import subprocess
import sys

import pytest
import torch

from anymodel import LLM, SamplingParams
from tests.models.zoo import build_tiny_model

ENGINE = dict(dtype="float32", num_kv_blocks=16)
REFUSED = r"refusing to load the pickle checkpoint \S*pytorch_model\.bin: .*argparse\.Namespace.*convert it to safetensors"


def _as_pickle(out, extra: dict) -> None:
    """Replace the safetensors checkpoint by pytorch_model.bin holding its tensors plus `extra`."""
    from safetensors.torch import load_file

    state = {}
    for file in out.glob("*.safetensors"):
        state.update(load_file(file))
        file.unlink()
    torch.save({**state, **extra}, out / "pytorch_model.bin")


@pytest.fixture(scope="module")
def unsafe_dir(tmp_path_factory):
    out = build_tiny_model("llama", tmp_path_factory.mktemp("unsafe"))
    _as_pickle(out, {"training_args": argparse.Namespace(lr=1e-4)})  # a global weights_only refuses
    return out


@pytest.mark.parametrize("model_impl", ["transformers", "native", "auto"])
def test_refused_pickle_is_one_clear_error(unsafe_dir, model_impl, caplog):
    with pytest.raises(ValueError, match=REFUSED) as info:
        LLM(str(unsafe_dir), model_impl=model_impl, **ENGINE)
    assert "\n" not in str(info.value)
    assert "using the Transformers backend" not in caplog.text  # "auto" does not retry the same file


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_cli_prints_one_line_and_fails(unsafe_dir, command):
    extra = ["--prompt", "hi"] if command == "generate" else ["--port", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "anymodel.server.cli", command, str(unsafe_dir), *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # the start-up log (INFO lines, as vLLM prints them) may come first; the error is one line, the last
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if "pickle" in line] == [lines[-1]]
    assert lines[-1].startswith("anymodel: error: refusing to load the pickle checkpoint")
    assert all(line.startswith(("INFO ", "WARNING ")) for line in lines[:-1]), lines[:-1]


def test_weights_only_pickle_still_loads(tmp_path):
    out = build_tiny_model("llama", tmp_path / "safe")
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    expected = LLM(str(out), **ENGINE).generate(["hello"], params, use_tqdm=False)[0].outputs[0].token_ids
    _as_pickle(out, {})
    assert LLM(str(out), **ENGINE).generate(["hello"], params, use_tqdm=False)[0].outputs[0].token_ids == expected


def test_the_refused_file_is_found_in_sub_folders(tmp_path):
    """sentence-transformers keeps Dense layers in sub-folders (2_Dense/pytorch_model.bin)."""
    import pickle

    from anymodel.native_overrides.weights import refusing_unsafe_pickles

    torch.save({"linear.weight": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")  # weights-only: fine
    (tmp_path / "2_Dense").mkdir()
    torch.save({"linear.weight": torch.ones(2, 2), "args": argparse.Namespace()}, tmp_path / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle checkpoint \S*2_Dense/pytorch_model\.bin: .*argparse\.Namespace"):
        with refusing_unsafe_pickles(tmp_path):
            torch.load(tmp_path / "2_Dense" / "pytorch_model.bin", weights_only=True)
    with pytest.raises(pickle.UnpicklingError, match="not a checkpoint"):  # no refused checkpoint: left as it is
        with refusing_unsafe_pickles(tmp_path / "2_Dense" / "missing"):
            raise pickle.UnpicklingError("not a checkpoint")
