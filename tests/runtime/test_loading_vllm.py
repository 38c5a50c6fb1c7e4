"""vLLM's loading options (issue 18): load_format="dummy", skip_tokenizer_init, `.bin`-only Hub repos
and the sharded loader, ModelScope, `inspect --runner pooling`, and the generation_config defaults
on every path (Engine.add_request without params, `anymodel generate`, update_from_generation_config)."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel import loader
from tests.models.tokenizer import EOS_ID
from tests.models.zoo import build_tiny_model

PROMPT = [17, 40, 99, 123, 200, 31]
GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model("llama", tmp_path_factory.mktemp("load"))


@pytest.fixture(scope="module")
def config_only(model_dir, tmp_path_factory):
    """The model's directory without its weights: config, tokenizer, generation config."""
    path = tmp_path_factory.mktemp("config-only") / "m"
    shutil.copytree(model_dir, path, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return path


# ---- load_format="dummy" ---------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_dummy_weights_need_no_checkpoint(config_only, impl):
    llm = LLM(str(config_only), load_format="dummy", model_impl=impl, dtype="float32", num_kv_blocks=32)
    out = llm.generate([{"prompt_token_ids": PROMPT}], GREEDY, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 5
    again = LLM(str(config_only), load_format="dummy", model_impl=impl, dtype="float32", num_kv_blocks=32)
    assert again.generate([{"prompt_token_ids": PROMPT}], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == out.token_ids
    stds = llm.collective_rpc(lambda w: [float(p.float().std()) for p in w.model.parameters() if p.dim() >= 2])[0]
    assert all(0 < s < 0.1 for s in stds)  # random matrices (N(0, 0.02)), not zeros, not garbage
    with pytest.raises((ValueError, OSError), match="safetensors"):
        LLM(str(config_only), model_impl=impl, dtype="float32", num_kv_blocks=32)  # without dummy: weights needed


# ---- skip_tokenizer_init ---------------------------------------------------------------------------
def test_skip_tokenizer_init_runs_token_ids_only(model_dir):
    llm = LLM(str(model_dir), skip_tokenizer_init=True, dtype="float32", num_kv_blocks=32)
    ref = LLM(str(model_dir), dtype="float32", num_kv_blocks=32)
    out = llm.generate([{"prompt_token_ids": PROMPT}, PROMPT], GREEDY, use_tqdm=False)
    want = ref.generate([{"prompt_token_ids": PROMPT}], GREEDY, use_tqdm=False)[0].outputs[0]
    assert llm.get_tokenizer() is None
    for o in out:
        assert o.outputs[0].token_ids == want.token_ids and o.outputs[0].text == ""
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        llm.generate(["hello"], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.generate([PROMPT], SamplingParams(stop=["x"]), use_tqdm=False)
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        llm.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="structured_outputs match text.*skip_tokenizer_init"):
        llm.generate([PROMPT], SamplingParams(structured_outputs={"regex": "[0-9]+"}), use_tqdm=False)


def test_skip_tokenizer_init_is_offline_only():
    from anymodel.config import EngineArgs
    from anymodel.server.app import build_app

    with pytest.raises(ValueError, match="offline-only"):
        build_app(EngineArgs(skip_tokenizer_init=True))


# ---- Hub / ModelScope downloads --------------------------------------------------------------------
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """snapshot_download and list_repo_files without a network; records the allow patterns."""
    import huggingface_hub

    seen = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo, revision=None: seen["files"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda **kw: seen.update(kw) or str(tmp_path))
    return seen


@pytest.mark.parametrize("files, load_format, wanted, unwanted", [
    (["config.json", "pytorch_model.bin"], "auto", "*.bin", "*.safetensors"),
    (["config.json", "model.safetensors", "pytorch_model.bin"], "auto", "*.safetensors", "*.bin"),
    (["config.json", "model.safetensors", "pytorch_model.bin"], "pt", "*.bin", "*.safetensors"),
    (["config.json", "model.safetensors"], "dummy", "*.json", "*.safetensors"),
])
def test_hub_downloads_the_weights_the_repo_has(fake_hub, files, load_format, wanted, unwanted):
    fake_hub["files"] = files
    loader.resolve_model_dir("org/model", None, None, load_format)
    assert wanted in fake_hub["allow_patterns"] and unwanted not in fake_hub["allow_patterns"]


def test_hub_offline_takes_either_weights_format(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no listing: the cache has what it has
    loader.resolve_model_dir("org/model")
    assert {"*.safetensors", "*.bin"} <= set(fake_hub["allow_patterns"])


@pytest.mark.parametrize("var", ["ANYMODEL_USE_MODELSCOPE", "VLLM_USE_MODELSCOPE"])
def test_modelscope(monkeypatch, tmp_path, var):
    monkeypatch.setenv(var, "1")
    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed
    with pytest.raises(ValueError, match="modelscope"):
        loader.resolve_model_dir("org/model")
    seen = {}
    hub = types.ModuleType("modelscope.hub.snapshot_download")
    hub.snapshot_download = lambda repo, **kw: seen.update(kw, repo=repo) or str(tmp_path)
    for name, module in (("modelscope", types.ModuleType("modelscope")),
                         ("modelscope.hub", types.ModuleType("modelscope.hub")),
                         ("modelscope.hub.snapshot_download", hub)):
        monkeypatch.setitem(sys.modules, name, module)
    assert loader.resolve_model_dir("org/model", "v1") == tmp_path
    assert seen["repo"] == "org/model" and seen["revision"] == "v1" and "*.bin" in seen["allow_patterns"]


def test_sharded_loader_reads_bin_checkpoints_weights_only(tmp_path):
    """The tensor-parallel loader's slices from a pytorch_model.bin equal those from safetensors."""
    from safetensors.torch import save_file

    from anymodel.adapters.sharded_loader import checkpoint_files, load_sharded
    from anymodel.adapters.tensor_parallel import ShardSpec

    state = {"weight": torch.arange(24.0).reshape(6, 4), "bias": torch.arange(6.0)}
    (tmp_path / "st").mkdir()
    (tmp_path / "pt").mkdir()
    save_file(state, str(tmp_path / "st" / "model.safetensors"))
    torch.save(state, tmp_path / "pt" / "pytorch_model.bin")
    assert set(checkpoint_files(tmp_path / "pt")) == {"weight", "bias"}
    loaded = []
    for sub in ("st", "pt"):
        with torch.device("meta"):
            model = torch.nn.Linear(4, 3)
        load_sharded(model, tmp_path / sub, {"weight": ShardSpec(0, [(3, 6)]), "bias": ShardSpec(0, [(3, 6)])},
                     torch.float32, {})
        loaded.append({k: v.clone() for k, v in model.state_dict().items()})
    assert torch.equal(loaded[1]["weight"], state["weight"][3:]) and torch.equal(loaded[0]["bias"], loaded[1]["bias"])
    torch.save({"weight": state["weight"], "evil": types.SimpleNamespace()}, tmp_path / "pt" / "pytorch_model.bin")
    import pickle

    with pytest.raises(pickle.UnpicklingError):  # weights_only: never unpickled (one message upstream)
        checkpoint_files(tmp_path / "pt")


# ---- inspect --runner pooling ----------------------------------------------------------------------
def test_inspect_honours_runner_pooling(model_dir, capsys):
    from anymodel.server.cli import main

    assert main(["inspect", str(model_dir), "--runner", "pooling"]) == 0
    out = capsys.readouterr().out
    assert "task embed" in out and "=> pooling" in out
    assert main(["inspect", str(model_dir)]) == 0
    assert "task generate" in capsys.readouterr().out


# ---- generation_config defaults, one rule everywhere --------------------------------------------------
@pytest.fixture(scope="module")
def gen_dir(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "m"
    shutil.copytree(model_dir, path)
    (path / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "max_new_tokens": 3,
                                                             "eos_token_id": [EOS_ID, 55]}))
    return path


def test_engine_add_request_without_params_takes_the_model_defaults(gen_dir):
    llm = LLM(str(gen_dir), dtype="float32", num_kv_blocks=32)
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.max_tokens) == (0.0, 3)
    engine = llm.engine
    engine.add_request("r", {"prompt_token_ids": PROMPT})  # no params
    final = None
    while engine.has_unfinished():
        final = next((o for o in engine.step() if o.finished), final)
    want = llm.generate([{"prompt_token_ids": PROMPT}], defaults, use_tqdm=False)[0].outputs[0]
    assert final.outputs[0].token_ids == want.token_ids and len(want.token_ids) <= 3


def test_anymodel_generate_takes_the_model_defaults(gen_dir, capsys):
    from anymodel.server.cli import main

    llm = LLM(str(gen_dir), dtype="float32", num_kv_blocks=32)
    want = llm.generate(["The cat"], llm.get_default_sampling_params(), use_tqdm=False)[0].outputs[0].text
    assert main(["generate", str(gen_dir), "--prompt", "The cat", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == want
    assert main(["generate", str(gen_dir), "--prompt", "The cat", "--dtype", "float32", "--max-tokens", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == llm.generate(
        ["The cat"], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)[0].outputs[0].text


def test_update_from_generation_config_is_vllms():
    p = SamplingParams(stop_token_ids=[9])
    p.update_from_generation_config({"eos_token_id": [2, 7, 8]}, model_eos_token_id=2)
    assert p.stop_token_ids == [7, 8, 9]  # the model's own EOS stays EOS
    q = SamplingParams(ignore_eos=True)
    q.update_from_generation_config({"eos_token_id": [2, 7]}, 2)
    assert q.stop_token_ids == []
    r = SamplingParams()
    r.update_from_generation_config({"eos_token_id": 7}, None)
    assert r.stop_token_ids == [7]
    r.update_from_generation_config({}, 2)
    assert r.stop_token_ids == [7]


def test_a_generation_config_eos_ends_with_its_id_as_stop_reason(gen_dir):
    """vLLM: generation_config's extra EOS id stops the request as a stop token (stop_reason = the id)."""
    llm = LLM(str(gen_dir), dtype="float32", num_kv_blocks=32)
    out = llm.generate([{"prompt_token_ids": PROMPT}], SamplingParams(temperature=0, max_tokens=3,
                                                                      logit_bias={55: 100}), use_tqdm=False)[0]
    assert (out.outputs[0].token_ids, out.outputs[0].finish_reason, out.outputs[0].stop_reason) == ([55], "stop", 55)
    ignored = llm.generate([{"prompt_token_ids": PROMPT}], SamplingParams(
        temperature=0, max_tokens=3, logit_bias={55: 100}, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    assert ignored.token_ids == [55, 55, 55] and ignored.finish_reason == "length"


def test_dummy_weights_under_tensor_parallelism(config_only):
    """Native models shard themselves: each rank fills its own shard; the Transformers backend's
    multi-rank loader reads checkpoint slices, so dummy is refused there by name."""
    llm = LLM(str(config_only), load_format="dummy", model_impl="native", tensor_parallel_size=2, dtype="float32",
              num_kv_blocks=32)
    try:
        out = llm.generate([{"prompt_token_ids": PROMPT}], GREEDY, use_tqdm=False)[0].outputs[0]
        assert len(out.token_ids) == 5
    finally:
        llm.engine.shutdown()
    with pytest.raises(ValueError, match="load_format='dummy'"):
        LLM(str(config_only), load_format="dummy", model_impl="transformers", tensor_parallel_size=2,
            dtype="float32", num_kv_blocks=32)


def test_skip_tokenizer_init_cross_encoder_score_refuses_by_name():
    from tests.pooling.encoders import cached_encoder

    path = cached_encoder("bert", "BertForSequenceClassification", num_labels=1)
    llm = LLM(str(path), skip_tokenizer_init=True, num_kv_blocks=32)
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        llm.score("a", "b")
