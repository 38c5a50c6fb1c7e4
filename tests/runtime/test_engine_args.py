"""Issue 18, "Engine arguments": a vLLM script's LLM(...) arguments work unchanged, or fail naming
the argument (never silently dropped). The model is the embedded demo adder (12+34= -> 46)."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.config import EngineArgs
from anymodel.demo import DEMO_MODEL_DIR


def test_a_vllm_script_runs_unchanged():
    # as written for vLLM: only the import line differs
    llm = LLM(model=str(DEMO_MODEL_DIR), dtype="float", runner="generate", tokenizer_mode="auto",
              trust_remote_code=False, seed=0, max_model_len=64, max_logprobs=20, enforce_eager=True,
              disable_log_stats=True, swap_space=4, cpu_offload_gb=0, max_seq_len_to_capture=8192,
              load_format="safetensors", download_dir=None, compilation_config=0, generation_config="auto",
              tokenizer_revision=None, skip_tokenizer_init=False)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    assert llm.generate(["12+34="], params)[0].outputs[0].text == "46"


@pytest.mark.parametrize("given, name", [("half", "float16"), ("float16", "float16"), ("bfloat16", "bfloat16"),
                                         ("float", "float32"), ("float32", "float32"), ("auto", "auto"),
                                         (torch.float16, "float16"), (torch.bfloat16, "bfloat16")])
def test_dtype_aliases(given, name):
    assert EngineArgs(dtype=given).dtype == name


def test_dtype_unknown_is_named():
    with pytest.raises(ValueError, match=r"unsupported dtype 'float64'; supported: \['auto'"):
        EngineArgs(dtype=torch.float64)


@pytest.mark.parametrize("kwargs, task", [
    (dict(runner="generate"), "generate"), (dict(runner="pooling"), "auto"),  # auto: the Engine picks a pooling task
    (dict(convert="embed"), "embed"), (dict(runner="pooling", convert="classify"), "classify"),
    (dict(convert="reward"), "reward"), (dict(task="embed", runner="pooling"), "embed"),
    (dict(task="score", convert="classify"), "score"), (dict(task="generate", runner="generate"), "generate"),
])
def test_runner_and_convert_name_the_task(kwargs, task):
    assert EngineArgs(**kwargs).task == task


@pytest.mark.parametrize("kwargs, names", [
    (dict(task="generate", runner="pooling"), ("task='generate'", "runner='pooling'")),
    (dict(task="embed", convert="classify"), ("task='embed'", "convert='classify'")),
    (dict(task="embed", runner="generate"), ("task='embed'", "runner='generate'")),
    (dict(runner="generate", convert="embed"), ("runner='generate'", "convert='embed'")),
])
def test_a_conflicting_pair_is_an_error_naming_both(kwargs, names):
    with pytest.raises(ValueError) as e:
        EngineArgs(**kwargs)
    assert all(n in str(e.value) for n in names)


def test_runner_pooling_on_a_generative_model_embeds():
    llm = LLM(runner="pooling")
    assert llm.engine.task == "embed"
    assert len(llm.embed(["12+34="], use_tqdm=False)[0].outputs.embedding) > 0


def test_pooler_config_is_the_new_name_of_override_pooler_config():
    assert EngineArgs(pooler_config={"pooling_type": "MEAN"}).override_pooler_config == {"pooling_type": "MEAN"}
    with pytest.raises(ValueError, match="pooler_config or override_pooler_config"):
        EngineArgs(pooler_config={"pooling_type": "MEAN"}, override_pooler_config={"pooling_type": "CLS"})


def test_unknown_argument_is_a_type_error_listing_the_supported_ones():
    with pytest.raises(TypeError, match=r"unknown engine argument\(s\) \['not_an_arg'\]; supported: .*'runner'"):
        LLM(not_an_arg=1)


@pytest.mark.parametrize("kwargs, name", [
    (dict(cpu_offload_gb=4), "cpu_offload_gb"), (dict(compilation_config={"level": 3}), "compilation_config"),
    (dict(compilation_config=3), "compilation_config"), (dict(load_format="npcache"), "load_format"),
    (dict(tokenizer_mode="mistral"), "tokenizer_mode"), (dict(swap_space=-1), "swap_space"),
    (dict(max_seq_len_to_capture=0), "max_seq_len_to_capture"),
])
def test_values_we_cannot_honour_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EngineArgs(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(compilation_config={}), dict(compilation_config={"level": 0}),
                                    dict(swap_space=0), dict(swap_space=16), dict(max_seq_len_to_capture=1024)])
def test_accepted_no_ops(kwargs):
    EngineArgs(**kwargs)


def test_load_format_pt_needs_a_checkpoint_without_safetensors():
    with pytest.raises(ValueError, match="load_format='pt'"):
        LLM(load_format="pt")


def test_download_dir_is_the_hub_cache(monkeypatch, tmp_path):
    import huggingface_hub

    from anymodel import loader

    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: seen.update(kw) or str(DEMO_MODEL_DIR))
    assert loader.resolve_model_dir("org/model", None, str(tmp_path)) == DEMO_MODEL_DIR
    assert seen["cache_dir"] == str(tmp_path) and seen["repo_id"] == "org/model"


# ---- generation_config.json: request defaults --------------------------------------------------------
GEN = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "max_new_tokens": 2,
       "do_sample": True, "eos_token_id": 2}
DEFAULTS = dict(temperature=0.6, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1, max_tokens=2)


@pytest.fixture(scope="module")
def gen_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo-gen") / "model"
    shutil.copytree(DEMO_MODEL_DIR, path)
    (path / "generation_config.json").write_text(json.dumps(GEN))
    return path


@pytest.fixture(scope="module")
def gen_llm(gen_model_dir):
    return LLM(str(gen_model_dir))


def test_generation_config_supplies_the_default_sampling_params(gen_llm):
    params = gen_llm.get_default_sampling_params()
    assert {k: getattr(params, k) for k in DEFAULTS} == DEFAULTS
    out = gen_llm.generate(["12+34="], use_tqdm=False)[0].outputs[0]  # no params: the defaults, max_tokens=2
    assert len(out.token_ids) == 2
    explicit = gen_llm.generate(["12+34="], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert explicit[0].outputs[0].text == "46"  # explicit SamplingParams are taken as they are (vLLM)


def test_generation_config_vllm_ignores_the_file(gen_model_dir):
    llm = LLM(str(gen_model_dir), generation_config="vllm")
    assert llm.get_default_sampling_params() == SamplingParams()


def test_generation_config_from_another_directory(gen_model_dir):
    llm = LLM(generation_config=str(gen_model_dir))  # the demo model, another directory's defaults
    assert llm.get_default_sampling_params().max_tokens == 2
    with pytest.raises(ValueError, match="no generation_config.json"):
        LLM(generation_config=str(gen_model_dir.parent))


def _handler(defaults: dict):
    from anymodel.server.serving import GenerationHandler

    engine = types.SimpleNamespace(engine=types.SimpleNamespace(default_sampling_params=defaults), max_model_len=64)
    return GenerationHandler(engine, "m", tokenizer=None)


def test_server_requests_fall_back_to_the_generation_config_for_fields_not_sent():
    from anymodel.server.protocol import ChatCompletionRequest, CompletionRequest

    handler = _handler(DEFAULTS)
    msgs = [{"role": "user", "content": "hi"}]
    chat = ChatCompletionRequest(messages=msgs, temperature=0.0, max_completion_tokens=5)
    params = handler.make_params(chat, chat.max_new_tokens(), None)
    # a sent max_tokens above generation_config's max_new_tokens is lowered to it (vLLM's get_max_tokens)
    assert (params.temperature, params.max_tokens, params.top_p, params.top_k) == (0.0, 2, 0.9, 20)
    chat = ChatCompletionRequest(messages=msgs, max_completion_tokens=1)
    assert handler.make_params(chat, chat.max_new_tokens(), None).max_tokens == 1  # below it: kept
    chat = ChatCompletionRequest(messages=msgs, temperature=None)  # null: not sent
    params = handler.make_params(chat, chat.max_new_tokens(), None)
    assert {k: getattr(params, k) for k in DEFAULTS} == DEFAULTS
    comp = CompletionRequest(prompt="x", top_k=3, repetition_penalty=1.0)
    params = handler.make_params(comp, comp.max_tokens, None)
    assert (params.top_k, params.repetition_penalty, params.max_tokens, params.min_p) == (3, 1.0, 2, 0.05)
    plain = _handler({}).make_params(comp, comp.max_tokens, None)
    assert (plain.temperature, plain.max_tokens) == (1.0, 16)  # no generation config: the API's defaults


def test_server_default_max_tokens_is_capped_not_refused():
    handler = _handler({"max_tokens": 100})  # more than the 64-token context: no 400 for a default
    handler._check_context(10, SamplingParams(max_tokens=100))
    from anymodel.server.errors import APIError

    with pytest.raises(APIError):
        handler._check_context(10, SamplingParams(max_tokens=60))  # sent by the client: vLLM's 400


# ---- the same flags on `anymodel serve` ------------------------------------------------------------
def test_serve_flags():
    from anymodel.server import cli

    ns = cli.build_parser().parse_args([
        "serve", "--dtype", "half", "--runner", "pooling", "--convert", "embed", "--pooler-config",
        '{"pooling_type": "MEAN"}', "--generation-config", "vllm", "--disable-log-stats", "--download-dir", "/d",
        "--load-format", "safetensors", "--tokenizer-mode", "slow", "--max-seq-len-to-capture", "4096",
        "--swap-space", "8", "--cpu-offload-gb", "0", "-O", "0"])
    args = cli.engine_args_from(ns)
    assert args == EngineArgs(dtype="float16", runner="pooling", convert="embed", task="embed",
                              override_pooler_config={"pooling_type": "MEAN"}, generation_config="vllm",
                              disable_log_stats=True, download_dir="/d", load_format="safetensors",
                              tokenizer_mode="slow", max_seq_len_to_capture=4096, swap_space=8, compilation_config=0)


@pytest.mark.parametrize("argv, name", [(["--cpu-offload-gb", "2"], "cpu_offload_gb"),
                                        (["--compilation-config", '{"level": 3}'], "compilation_config"),
                                        (["--task", "generate", "--runner", "pooling"], "runner='pooling'"),
                                        (["--skip-tokenizer-init"], "skip_tokenizer_init")])
def test_serve_refuses_by_name(argv, name, capsys):
    from anymodel.server import cli

    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anymodel: error: ") and name in err


def test_an_invalid_generation_config_fails_at_start_naming_the_file(tmp_path):
    path = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, path)
    (path / "generation_config.json").write_text(json.dumps({"top_p": 0}))
    with pytest.raises(ValueError, match="generation_config.json: .*top_p"):
        LLM(str(path))
    assert LLM(str(path), generation_config="vllm").get_default_sampling_params() == SamplingParams()


def test_the_server_uses_the_generation_config_for_fields_not_sent(gen_model_dir):
    import httpx

    from anymodel.server.app import build_app
    from tests.server.servers import ThreadedServer

    app = build_app(EngineArgs(model=str(gen_model_dir), seed=0))
    with ThreadedServer(app) as server:
        def tokens(path: str, body: dict) -> int:
            r = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["usage"]["completion_tokens"]

        chat = {"messages": [{"role": "user", "content": "12+34"}]}
        assert tokens("completions", {"prompt": "12+34="}) == 2  # max_new_tokens, not the API's 16
        assert tokens("chat/completions", chat) == 2
        # a sent max_tokens is lowered to max_new_tokens (vLLM's get_max_tokens), never raised
        assert tokens("completions", {"prompt": "1+1=", "max_tokens": 3, "temperature": 0, "ignore_eos": True}) == 2
        assert tokens("chat/completions", {**chat, "max_completion_tokens": 3, "ignore_eos": True}) == 2
        assert tokens("completions", {"prompt": "1+1=", "max_tokens": 1, "ignore_eos": True}) == 1
