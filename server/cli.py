"""The `anymodel` command: serve | generate | inspect | bench. Engine flags are vLLM's, mapped 1:1 onto EngineArgs.

Heavy imports (torch, the engine, uvicorn) happen only inside the command that needs them, so
`anymodel --help` is instant. Every engine flag defaults to "not given" and EngineArgs supplies the
default, so there is one source of truth for defaults and validation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import fields

from anymodel.bench import KINDS, run_bench
from anymodel.config import (ATTENTION_BACKENDS, CONVERTS, DTYPE_ALIASES, DTYPES, EXECUTOR_BACKENDS,
                              KV_CACHE_DTYPES, LOAD_FORMATS, MODEL_IMPLS, RUNNERS, TASKS, TOKENIZER_MODES,
                              EngineArgs)

from .request_fields import MAX_PROMPTS_PER_REQUEST

BENCHES = tuple(KINDS)
EXAMPLES = """examples:
  anymodel serve                                      # the embedded demo model on :8000
  anymodel serve ./my-model --model-impl transformers --trust-remote-code
  anymodel generate --prompt "12+34="
  anymodel inspect ./my-model -tp 2                   # which implementation runs it, and why
  anymodel bench attention --help
"""


class CLIError(Exception):
    """A user mistake: printed as one line, exit status 2."""


# ------------------------------------------------------------------------- value parsers
def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at char {e.pos}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _size(text: str, *, binary_k: bool = False) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a number with an optional k/M/G/Ki/Mi/Gi suffix, got {text!r}")
    unit = m.group(2) or ""
    scale = 1024 if binary_k and unit == "k" else _UNITS[unit]
    return int(float(m.group(1)) * scale)


def _bytes(text: str) -> int:
    return _size(text)


def _tokens(text: str) -> int:  # --max-model-len 4k == 4096, as vLLM reads it
    return _size(text, binary_k=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _lora_module(text: str):
    from .lora_models import parse_lora_module

    try:
        return parse_lora_module(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _compilation_config(text: str):
    """vLLM's -O / --compilation-config: a level (int) or a JSON object."""
    return int(text) if text.strip().lstrip("-").isdigit() else _json_dict(text)


def _chat_template(value: str) -> str:
    """A file path (read here) or an inline Jinja template."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" in value:
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a readable file nor an inline Jinja template")


# ------------------------------------------------------------------------------ parser
def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("model", nargs="?", default=None, help="local directory or Hub id (default: the embedded demo model)")
    g.add_argument("--model-impl", choices=MODEL_IMPLS, help="native: hand-written fast model; transformers: HF modeling code (default: auto)")
    g.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the model's own code (auto_map)")
    g.add_argument("--task", choices=TASKS, help="default: auto (from the architecture)")
    g.add_argument("--runner", choices=RUNNERS, help="vLLM's newer name for the task: generate | pooling (default: auto)")
    g.add_argument("--convert", choices=CONVERTS, help="with --runner pooling: the pooling task (default: auto)")
    g.add_argument("--dtype", choices=[*DTYPES, *DTYPE_ALIASES], help="default: auto (half = float16, float = float32)")
    g.add_argument("--max-model-len", type=_tokens, metavar="N", help="context length, e.g. 4096 or 4k (default: the model's)")
    g.add_argument("--hf-overrides", type=_json_dict, metavar="JSON", help="config.json entries to override")
    g.add_argument("--override-pooler-config", type=_json_dict, metavar="JSON", help="old name of --pooler-config")
    g.add_argument("--pooler-config", type=_json_dict, metavar="JSON", help='e.g. \'{"pooling_type": "MEAN"}\'')
    g.add_argument("--generation-config", metavar="auto|vllm|DIR",
                   help="request defaults: the model's generation_config.json (auto), none (vllm) or DIR's")
    g.add_argument("--revision", help="Hub revision of the model")
    g.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: the model's)")
    g.add_argument("--tokenizer-revision", help="Hub revision of the tokenizer")
    g.add_argument("--tokenizer-mode", choices=TOKENIZER_MODES, help="slow: the Python tokenizer (default: auto)")
    g.add_argument("--skip-tokenizer-init", action="store_true", default=None, help="offline only (LLM): not with serve")
    g.add_argument("--download-dir", metavar="DIR", help="Hub cache directory for downloads (default: HF_HOME's)")
    g.add_argument("--load-format", choices=LOAD_FORMATS,
                   help="auto | safetensors | pt (a .bin-only checkpoint) | dummy (random weights) (default: auto)")
    g.add_argument("--seed", type=int, help="default: 0")
    g.add_argument("--quantization", "-q", metavar="METHOD",
                   help="the checkpoint's quant_method (default: read from config.json; fp8, compressed-tensors)")
    g.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, help="auto (the model's dtype) or fp8 / fp8_e4m3 / fp8_e5m2 (torch attention backend)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: auto)")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, metavar="N")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, metavar="N")
    g.add_argument("--distributed-executor-backend", choices=[b for b in EXECUTOR_BACKENDS if b])
    g.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, help="default: auto")
    g.add_argument("--kv-cache-memory", type=_bytes, metavar="BYTES", help="KV cache size, e.g. 8GiB or 2e9")
    g.add_argument("--num-kv-blocks", type=int, metavar="N", help="KV cache size in blocks (instead of bytes)")
    g.add_argument("--gpu-memory-utilization", type=float, metavar="F",
                   help="GPU: share of device memory for weights, activations and KV cache (default: 0.9)")
    g.add_argument("--block-size", type=int, metavar="N", help="tokens per KV block (default: 16)")
    g.add_argument("--max-num-seqs", type=int, metavar="N", help="most requests in one batch (default: 256)")
    g.add_argument("--max-logprobs", type=int, metavar="N",
                   help="most logprobs / prompt_logprobs a request may ask for (default: 20; -1: no cap)")
    g.add_argument("--max-num-batched-tokens", type=int, metavar="N", help="token budget of one step")
    g.add_argument("--scheduling-policy", choices=["fcfs", "priority"],
                   help="order of waiting requests (default: fcfs); priority: lower `priority` first (a "
                        "request's field on the server, generate(priority=[...]) offline)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse KV blocks of shared prompt prefixes (default: on)")
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="split long prompts across steps (default: on)")
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="--no-enforce-eager: replay decode steps from CUDA graphs (one GPU, triton attention; "
                        "not yet run on a GPU, so off by default)")
    g.add_argument("--enable-compat-path", action=argparse.BooleanOptionalAction, default=None,
                   help="run models our attention cannot reach through their own forward (default: on)")
    g.add_argument("--max-seq-len-to-capture", type=int, metavar="N", help="accepted: CUDA graphs capture decode only")
    g.add_argument("--swap-space", type=float, metavar="GiB", help="accepted: preemption recomputes, nothing is swapped")
    g.add_argument("--cpu-offload-gb", type=float, metavar="GiB", help="only 0 (weights stay on the device)")
    g.add_argument("--compilation-config", "-O", type=_compilation_config, metavar="LEVEL|JSON",
                   help="only 0 / {} (anymodel does not compile the model)")
    g.add_argument("--enable-prompt-embeds", action="store_true", default=None,
                   help="/v1/completions takes prompt_embeds (base64 of torch.save(tensor [T, hidden]))")
    g.add_argument("--disable-log-stats", action="store_true", default=None, help="no periodic engine stats line (throughput, requests, KV usage; every $ANYMODEL_LOG_STATS_INTERVAL s, default 10)")
    g.add_argument("--structured-outputs-config", type=_json_dict, metavar="JSON",
                   help='e.g. \'{"backend": "xgrammar", "disable_any_whitespace": true}\'')
    g.add_argument("--guided-decoding-backend", choices=["auto", "xgrammar", "guidance"],
                   help="vLLM's older name of structured_outputs_config.backend (guidance: refused)")
    g.add_argument("--served-model-name", metavar="NAME", nargs="+",
                   help="the name(s) clients send as `model`; responses carry the first (default: MODEL)")
    g.add_argument("--chat-template", type=_chat_template, metavar="FILE|TEMPLATE",
                   help="Jinja chat template, a file or inline (default: the tokenizer's)")
    lora = p.add_argument_group("LoRA adapters")
    lora.add_argument("--enable-lora", action="store_true", default=None, help="serve LoRA adapters (PEFT format)")
    lora.add_argument("--max-loras", type=int, metavar="N", help="distinct adapters in one step (default: 1)")
    lora.add_argument("--max-lora-rank", type=int, metavar="R", help="the largest adapter rank (default: 16)")
    lora.add_argument("--max-cpu-loras", type=int, metavar="N", help="adapters kept in host memory (default: --max-loras)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anymodel", description="Serve any Hugging Face Transformers model at inference-engine speed.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{serve,generate,inspect,bench}")
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server", usage="anymodel serve [MODEL] [options]",
                           description="Start an OpenAI-compatible server (/v1/completions, /v1/chat/completions, ...).")
    _add_model_args(serve)
    _add_engine_args(serve)
    http = serve.add_argument_group("http")
    http.add_argument("--host", default="0.0.0.0",
                      help="default: 0.0.0.0, every interface (as vLLM); 127.0.0.1 for this machine only")
    http.add_argument("--port", type=int, default=8000, help="default: 8000")
    http.add_argument("--api-key", metavar="KEY", default=os.environ.get("ANYMODEL_API_KEY"),
                      help="require `Authorization: Bearer KEY` (default: $ANYMODEL_API_KEY, or none)")
    http.add_argument("--lora-modules", nargs="+", type=_lora_module, metavar="NAME=PATH|JSON",
                      help='LoRA adapters served as model NAME (needs --enable-lora); also '
                           '\'{"name": ..., "path": ..., "base_model_name": ...}\'')
    http.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    http.add_argument("--enable-force-include-usage", action="store_true",
                      help="every stream ends with a usage chunk, as if stream_options.include_usage were sent")
    http.add_argument("--enable-tokenizer-info-endpoint", action="store_true",
                      help="serve GET /tokenizer_info (tokenizer class, special tokens, chat template)")
    http.add_argument("--root-path", default="", metavar="PATH",
                      help="the path prefix a proxy serves this server under (FastAPI's root_path), e.g. /llm")
    http.add_argument("--metrics-prefix", choices=["anymodel", "vllm"], default=None,
                      help="/metrics names: anymodel:* (default, or $ANYMODEL_METRICS_PREFIX) or vllm:*, vLLM's "
                           "names exactly, for dashboards and autoscalers written for vLLM")
    tools = serve.add_argument_group("tools and reasoning")
    tools.add_argument("--enable-auto-tool-choice", action="store_true",
                       help='tool_choice "auto": find tool calls in the output with --tool-call-parser')
    tools.add_argument("--tool-call-parser", metavar="NAME", help="hermes | llama3_json | mistral | a plugin's name")
    tools.add_argument("--tool-parser-plugin", metavar="FILE", help="a Python file that registers a tool parser")
    tools.add_argument("--reasoning-parser", metavar="NAME", help="deepseek_r1 | qwen3: <think> -> reasoning_content")
    http.add_argument("--max-prompts-per-request", type=_positive, default=MAX_PROMPTS_PER_REQUEST, metavar="N",
                      help="most prompts (or pooling inputs) in one request; more is a 400 "
                           f"(default: {MAX_PROMPTS_PER_REQUEST}, OpenAI's limit on embeddings inputs)")
    gen = sub.add_parser("generate", help="one-shot generation, printed to stdout",
                         usage="anymodel generate [MODEL] --prompt TEXT [options]",
                         description="Generate once from --prompt and print the text.")
    _add_model_args(gen)
    _add_engine_args(gen)
    s = gen.add_argument_group("sampling")
    s.add_argument("--prompt", required=True, help="the prompt text")
    s.add_argument("--max-tokens", type=int, metavar="N", help="default: generation_config.json's, else 16")
    s.add_argument("--temperature", type=float, metavar="T", help="default: generation_config.json's, else 0 (greedy)")
    s.add_argument("--top-p", type=float, metavar="P", help="default: generation_config.json's, else 1")
    _add_inspect_parser(sub)
    bench = sub.add_parser("bench", help=f"benchmarks: {' | '.join(BENCHES)}",
                           description="Run a benchmark; arguments after KIND go to it (try `anymodel bench KIND --help`).")
    bench.add_argument("kind", choices=BENCHES)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    return parser


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="which implementation would run MODEL, and why (loads no weights)",
                       usage="anymodel inspect MODEL [options]",
                       description="Print the model loader's decision table: every rule, whether it applies, why.")
    p.add_argument("model", help="local directory or Hub id")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the model's own code (auto_map)")
    p.add_argument("--task", choices=TASKS, help="default: auto (from the architecture)")
    p.add_argument("--runner", choices=RUNNERS, help="vLLM's newer name for the task: generate | pooling (default: auto)")
    p.add_argument("--convert", choices=CONVERTS, help="with --runner pooling: the pooling task (default: auto)")
    p.add_argument("--model-impl", choices=MODEL_IMPLS, help="default: auto")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, metavar="N")
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, metavar="N")
    p.add_argument("--enable-compat-path", action=argparse.BooleanOptionalAction, default=None,
                   help="run models our attention cannot reach through their own forward (default: on)")
    p.add_argument("--hf-overrides", type=_json_dict, metavar="JSON", help="config.json entries to override")
    p.add_argument("--revision", help="Hub revision of the model")
    p.add_argument("--quantization", "-q", metavar="METHOD", help="the checkpoint's quant_method (default: config.json's)")


# ---------------------------------------------------------------------------- commands
def engine_args_from(ns: argparse.Namespace) -> EngineArgs:
    """Flags the user gave, 1:1 onto EngineArgs fields; EngineArgs validates (ValueError)."""
    given = {f.name: getattr(ns, f.name) for f in fields(EngineArgs)
             if f.name != "model" and getattr(ns, f.name, None) is not None}
    return EngineArgs.from_kwargs(ns.model, given)


class ExitOnFatal:
    """The app's on_fatal hook: stop uvicorn (graceful: open responses end) and exit 1, as vLLM
    does, so that an orchestrator restarts the server instead of it answering 503 forever."""

    def __init__(self):
        self.error: BaseException | None = None
        self.server = None  # uvicorn.Server, once made

    def __call__(self, error: BaseException) -> None:
        self.error = error
        if self.server is not None:
            self.server.should_exit = True  # uvicorn's main loop polls it; safe from the engine thread

    def run(self, app, **config) -> int:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        if self.error is None:  # the engine may have died while the app was being built
            self.server.run()
        if self.error is not None:
            return 1
        return 0 if self.server.started else 3  # 3: uvicorn's start-up failure (port taken, ...), as uvicorn.run


def _serve(ns: argparse.Namespace) -> int:
    engine_args = engine_args_from(ns)
    from .app import build_app

    from .chat_output import ChatOptions

    chat_options = ChatOptions(ns.enable_auto_tool_choice, ns.tool_call_parser, ns.tool_parser_plugin,
                               ns.reasoning_parser)  # checked before the engine loads
    exit_on_fatal = ExitOnFatal()
    app = build_app(engine_args, api_key=ns.api_key, max_prompts_per_request=ns.max_prompts_per_request,
                    on_fatal=exit_on_fatal, chat_options=chat_options,
                    lora_modules=ns.lora_modules, metrics_prefix=ns.metrics_prefix,
                    enable_tokenizer_info_endpoint=ns.enable_tokenizer_info_endpoint,
                    enable_force_include_usage=ns.enable_force_include_usage)
    return exit_on_fatal.run(app, host=ns.host, port=ns.port, log_level=ns.log_level, root_path=ns.root_path)


_GENERATE_FALLBACKS = {"max_tokens": 16, "temperature": 0.0}  # where neither a flag nor the model says


def _generate(ns: argparse.Namespace) -> int:
    engine_args = engine_args_from(ns)
    from anymodel.engine.engine import Engine

    engine = Engine(engine_args)
    # flags given win, then the model's generation_config.json defaults (Engine.default_params), then
    # this command's own (16 tokens, greedy)
    given = {k: getattr(ns, k) for k in ("max_tokens", "temperature", "top_p") if getattr(ns, k) is not None}
    params = engine.default_params({**given, "seed": engine_args.seed}, _GENERATE_FALLBACKS)
    engine.add_request("generate-0", ns.prompt, params)
    final = None
    while engine.has_unfinished():
        final = next((o for o in engine.step() if o.finished), final)
    print(final.outputs[0].text if final else "")
    return 0


def _inspect(ns: argparse.Namespace) -> int:
    """The decision table for the model as these flags would load it: config and classes only."""
    from anymodel import loader
    from anymodel.distributed import ParallelState
    from anymodel.model_loader import evaluate

    args = engine_args_from(ns)
    model_dir = loader.resolve_model_dir(args.model, args.revision, args.download_dir, "dummy")  # no weights
    config = loader.load_config(model_dir, args.trust_remote_code, args.hf_overrides)
    state = ParallelState(tp_size=args.tensor_parallel_size, pp_size=args.pipeline_parallel_size)
    decision, verdicts = evaluate(args, config, model_dir, state)
    request = decision.facts.request
    print(f"{args.model}: {decision.facts.arch}, task {request.task}, model_impl {request.model_impl}, "
          f"tp={state.tp_size} pp={state.pp_size}")
    width = max(len(v.rule.name) for v in verdicts)
    after = False
    for v in verdicts:
        mark = ("(yes)" if v.applied else "(no)") if after else ("YES" if v.applied else "no")
        lines = v.reason.splitlines() or [""]
        print(f"  {v.rule.name:<{width}}  {mark:<5}  {lines[0]}")
        for line in lines[1:]:
            print(f"  {'':<{width}}  {'':<5}  {line}")
        after = after or v.rule.name == decision.rule
    print(f"=> {decision.impl} ({decision.rule}); rules in parentheses come after the one that decides")
    return 0


def _bench(kind: str, rest: list[str]) -> int:
    try:
        return run_bench(kind, rest)
    except ImportError as e:
        raise CLIError(f"`anymodel bench {kind}` is not available yet ({e})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHES:
            return _bench(argv[1], argv[2:])  # the benchmark parses (and documents) its own flags
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 2
        return {"serve": _serve, "generate": _generate, "inspect": _inspect}[ns.command](ns)
    except (ValueError, CLIError) as e:  # EngineArgs / Engine reject the configuration
        print(f"anymodel: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
