"""`anymodel` CLI: help, flags onto EngineArgs 1:1, clean errors (exit 2), bench dispatch."""

from __future__ import annotations

import sys
import types
from dataclasses import fields

import pytest

from anymodel.config import EngineArgs
from anymodel.server import cli


def parse(*argv: str):
    return cli.engine_args_from(cli.build_parser().parse_args(["serve", *argv]))


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("serve", "generate", "bench", "anymodel serve ./my-model --model-impl transformers"):
        assert word in out


def test_no_flags_means_engine_defaults():
    assert parse() == EngineArgs()


def test_flags_map_one_to_one_onto_engine_args(tmp_path):
    args = parse(
        "some/model", "--model-impl", "transformers", "--trust-remote-code", "--task", "generate", "--dtype", "float32",
        "--max-model-len", "4k", "--hf-overrides", '{"num_hidden_layers": 2}', "--override-pooler-config",
        '{"pooling_type": "MEAN"}', "--revision", "main", "--tokenizer", "tok", "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "1", "--attention-backend", "torch", "--kv-cache-memory", "1GiB",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "512", "--served-model-name", "m", "--seed", "3",
        "--block-size", "32", "--num-kv-blocks", "100", "--no-enable-prefix-caching",
        "--distributed-executor-backend", "mp", "--chat-template", "{{ messages[0]['content'] }}")
    assert args == EngineArgs(
        model="some/model", model_impl="transformers", trust_remote_code=True, task="generate", dtype="float32",
        max_model_len=4096, hf_overrides={"num_hidden_layers": 2}, override_pooler_config={"pooling_type": "MEAN"},
        revision="main", tokenizer="tok", tensor_parallel_size=2, pipeline_parallel_size=1,
        attention_backend="torch", kv_cache_memory=2**30, max_num_seqs=8, max_num_batched_tokens=512,
        served_model_name="m", seed=3, block_size=32, num_kv_blocks=100, enable_prefix_caching=False,
        distributed_executor_backend="mp", chat_template="{{ messages[0]['content'] }}")


def test_every_engine_argument_has_a_flag():
    dests = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert {f.name for f in fields(EngineArgs)} <= dests


def test_chat_template_from_a_file(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert parse("--chat-template", str(path)).chat_template == path.read_text()


@pytest.mark.parametrize("argv, message", [
    (["serve", "--max-num-seqs", "0"], "max_num_seqs must be an integer >= 1, got 0"),
    (["serve", "--tensor-parallel-size", "-1"], "tensor_parallel_size"),
    (["generate", "--prompt", "x", "--block-size", "0"], "block_size"),
])
def test_invalid_engine_argument_is_one_clean_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anymodel: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["serve", "--hf-overrides", "{bad"], ["serve", "--dtype", "float64"], ["serve", "--chat-template", "nofile"],
    ["serve", "--kv-cache-memory", "lots"], ["bench", "nonsense"],
])
def test_malformed_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_bench_dispatch(monkeypatch):
    seen = {}
    fake = types.ModuleType("anymodel.bench.generation")
    fake.main = lambda argv: seen.setdefault("bench", argv) and 0
    attn = types.ModuleType("anymodel.bench.attention")
    attn.main = lambda argv: seen.setdefault("attention", argv) and 3
    monkeypatch.setitem(sys.modules, "anymodel.bench.generation", fake)
    monkeypatch.setitem(sys.modules, "anymodel.bench.attention", attn)
    assert cli.main(["bench", "latency", "--batch-size", "4"]) == 0
    assert cli.main(["bench", "attention", "--help"]) == 3
    assert seen == {"bench": ["latency", "--batch-size", "4"], "attention": ["--help"]}


def test_bench_not_available_yet(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "anymodel.bench.generation", None)  # makes the import fail
    assert cli.main(["bench", "throughput"]) == 2
    assert "not available yet" in capsys.readouterr().err


def test_generate_one_shot(capsys):
    assert cli.main(["generate", "--prompt", "12+34=", "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out == "46\n"


def test_serve_http_flags():
    ns = cli.build_parser().parse_args(["serve"])
    assert ns.host == "0.0.0.0"  # every interface, as vLLM; the README shows --host 127.0.0.1
    assert ns.max_prompts_per_request == 2048
    assert cli.build_parser().parse_args(["serve", "--max-prompts-per-request", "10000"]).max_prompts_per_request == 10000


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_prompts_per_request_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--max-prompts-per-request", value])
    assert exc.value.code == 2 and "integer >= 1" in capsys.readouterr().err


# ---- inspect: the model loader's decision table, no weights loaded --------------------------------
@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tests.models.zoo import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("inspect"))


def test_inspect_prints_every_rule_with_its_reason(tiny_llama_dir, capsys, monkeypatch):
    from anymodel.model_loader import RULES
    from anymodel.native_overrides.base import NativeForCausalLM

    def no_weights(*args, **kwargs):
        raise AssertionError("inspect loads no weights")

    monkeypatch.setattr(NativeForCausalLM, "from_pretrained", classmethod(no_weights))
    assert cli.main(["inspect", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tiny_llama_dir}: LlamaForCausalLM, task generate, model_impl auto, tp=1 pp=1"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out[1:len(RULES) + 1]}
    assert list(rows) == [rule.name for rule in RULES]
    assert all(len(row) == 2 and row[1] for name, row in rows.items() if name != "incompatible")
    assert rows["native"][0] == "YES" and rows["native"][1].startswith("native LlamaForCausalLM")
    assert rows["pooling"] == ["no", "task 'generate'"]
    assert rows["transformers"][0] == "(yes)"  # after the deciding rule: would apply
    assert out[-1].startswith("=> native (native)")


def test_inspect_flags_change_the_decision(tiny_llama_dir, capsys):
    assert cli.main(["inspect", str(tiny_llama_dir), "--model-impl", "transformers", "-tp", "2"]) == 0
    out = capsys.readouterr().out
    assert "tp=2 pp=1" in out and "sharded over 2 ranks" in out
    assert out.splitlines()[-1].startswith("=> transformers (transformers)")
    assert cli.main(["inspect", str(tiny_llama_dir), "--task", "embed"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("=> pooling")
    assert cli.main(["inspect", str(tiny_llama_dir), "-pp", "2", "--model-impl", "native"]) == 0
    assert "=> refuse (native-parallel)" in capsys.readouterr().out


def test_inspect_a_missing_model_is_one_clean_line(capsys):
    assert cli.main(["inspect", "/definitely/not/here"]) == 2
    assert "no such directory" in capsys.readouterr().err
