"""`anymodel bench serve`: load an OpenAI-compatible server as vLLM's `bench serve` does.

    anymodel bench serve --base-url http://127.0.0.1:8000 --dataset random --num-prompts 64 \\
        --random-input-len 128 --random-output-len 64 --request-rate 8 --max-concurrency 16 --ignore-eos

Requests arrive as a Poisson process at `--request-rate` per second (`inf`: all at once), at most
`--max-concurrency` in flight; each streams (`stream_options.include_usage`) so that every chunk's
arrival time is seen. Per request: TTFT (first text), ITL (gaps between text chunks), TPOT ((E2E -
TTFT) / (output tokens - 1)) and E2E latency; the report gives mean, median and p99 of each, request
and token throughput, and `--result-file` writes it all as JSON. The client speaks only the OpenAI
API, so the same command measures anymodel, vLLM or any other server.

Datasets: `random` (prompts of random token ids, exact lengths: `/v1/completions` takes token-id
prompts; the chat endpoint needs `--tokenizer` to turn them into text), `sharegpt-json` (ShareGPT's
list of `conversations`: the first human turn is the prompt, the reply's length the output length,
counted with `--tokenizer` or fixed by `--sharegpt-output-len`) and `file` (JSON lines with `prompt`
and optional `max_tokens`, or plain text, one prompt a line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class BenchRequest:
    prompt: str | list[int]  # text, or token ids (completions only)
    output_len: int


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds from send to the first text
    latency: float = 0.0  # seconds from send to the end of the stream
    itl: list[float] = field(default_factory=list)  # gaps between text chunks
    error: str = ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (default %(default)s)")
    p.add_argument("--endpoint", default="/v1/completions", choices=ENDPOINTS)
    p.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--api-key", help="Bearer token (default: $OPENAI_API_KEY when set)")
    p.add_argument("--dataset", "--dataset-name", dest="dataset", default="random",
                   choices=["random", "sharegpt-json", "file"])
    p.add_argument("--dataset-path", help="the sharegpt-json or file dataset")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths drawn uniformly from [len * (1 - r), len * (1 + r)] (default 0: fixed)")
    p.add_argument("--random-vocab-size", type=int, help="token ids drawn below this (default: the tokenizer's size)")
    p.add_argument("--sharegpt-output-len", type=int, help="fixed output length for sharegpt-json")
    p.add_argument("--tokenizer", help="local or Hub tokenizer, to count or decode dataset tokens")
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests per second, Poisson (default inf)")
    p.add_argument("--max-concurrency", type=int, help="requests in flight at most (default: unlimited)")
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (vLLM's extension) for exact output lengths")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--probe-health", action="store_true",
                   help="also time GET /health every 50 ms during the run (the server's responsiveness under load)")
    p.add_argument("--result-file", help="write the report as JSON here")
    args = p.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    if args.num_prompts < 1:
        raise SystemExit(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if not 0.0 <= args.random_range_ratio < 1.0:
        raise SystemExit(f"--random-range-ratio must be in [0, 1), got {args.random_range_ratio}")
    if args.request_rate <= 0:
        raise SystemExit(f"--request-rate must be > 0 (inf: all at once), got {args.request_rate}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise SystemExit(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if args.dataset != "random" and not args.dataset_path:
        raise SystemExit(f"--dataset {args.dataset} needs --dataset-path")


# ---------------------------------------------------------------- datasets


def _tokenizer(name: str | None):
    if name is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _spread(length: int, ratio: float, rng: random.Random) -> int:
    low, high = max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))
    return rng.randint(low, high)


def random_requests(args: argparse.Namespace, tokenizer) -> list[BenchRequest]:
    rng = random.Random(args.seed)
    if args.random_vocab_size is None and tokenizer is None:
        raise SystemExit("--dataset random needs --tokenizer or --random-vocab-size (prompt token ids must be in the "
                         "model's vocabulary)")
    vocab = args.random_vocab_size or len(tokenizer)
    chat = args.endpoint == "/v1/chat/completions"
    if chat and tokenizer is None:
        raise SystemExit("--dataset random with the chat endpoint needs --tokenizer (chat prompts are text)")
    out = []
    for _ in range(args.num_prompts):
        ids = [rng.randrange(vocab) for _ in range(_spread(args.random_input_len, args.random_range_ratio, rng))]
        prompt = tokenizer.decode(ids) if chat else ids
        out.append(BenchRequest(prompt, _spread(args.random_output_len, args.random_range_ratio, rng)))
    return out


def sharegpt_requests(args: argparse.Namespace, tokenizer) -> list[BenchRequest]:
    if args.sharegpt_output_len is None and tokenizer is None:
        raise SystemExit("--dataset sharegpt-json needs --tokenizer (to count reply tokens) or --sharegpt-output-len")
    out = []
    for entry in json.loads(Path(args.dataset_path).read_text()):
        turns = entry.get("conversations") or []
        if len(turns) < 2:
            continue
        prompt, reply = turns[0]["value"], turns[1]["value"]
        length = args.sharegpt_output_len or len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        out.append(BenchRequest(prompt, max(1, length)))
        if len(out) == args.num_prompts:
            break
    return out


def file_requests(args: argparse.Namespace, tokenizer) -> list[BenchRequest]:
    out = []
    for line in Path(args.dataset_path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line) if line.lstrip().startswith("{") else {"prompt": line}
        out.append(BenchRequest(row["prompt"], int(row.get("max_tokens", args.random_output_len))))
        if len(out) == args.num_prompts:
            break
    return out


DATASETS = {"random": random_requests, "sharegpt-json": sharegpt_requests, "file": file_requests}


# ---------------------------------------------------------------- one request


def request_body(args: argparse.Namespace, model: str, request: BenchRequest) -> dict:
    body = {"model": model, "max_tokens": request.output_len, "temperature": args.temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


def _chunk_text(chunk: dict) -> str:
    text = ""
    for choice in chunk.get("choices") or ():
        text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


async def send(client, args: argparse.Namespace, model: str, request: BenchRequest) -> RequestResult:
    """Stream one request; every data chunk with text is a token arrival."""
    result, start = RequestResult(ok=False), time.perf_counter()
    last = None
    try:
        async with client.stream("POST", args.endpoint, json=request_body(args, model, request)) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk, now = json.loads(line[len("data: "):]), time.perf_counter()
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if _chunk_text(chunk):
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens, result.output_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    except Exception as e:  # a dropped connection or a timeout fails this request, not the run
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.latency, result.ok = time.perf_counter() - start, True
    return result


# ---------------------------------------------------------------- the run


async def _arrivals(n: int, rate: float, rng: random.Random):
    """Yields request indices at Poisson arrival times (`rate` per second; inf: at once)."""
    for i in range(n):
        yield i
        if rate != math.inf:
            await asyncio.sleep(rng.expovariate(rate))


async def run(args: argparse.Namespace, requests: list[BenchRequest]) -> tuple[list[RequestResult], float, list[float]]:
    """Every request's result, the run's duration, and the /health probe latencies (--probe-health)."""
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency or len(requests))
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model or await _served_model(client)
        gate = asyncio.Semaphore(args.max_concurrency or len(requests))

        async def one(request: BenchRequest) -> RequestResult:
            async with gate:
                return await send(client, args, model, request)

        start, probes = time.perf_counter(), []
        prober = asyncio.create_task(_probe_health(client, probes)) if args.probe_health else None
        tasks = [asyncio.create_task(one(requests[i])) async for i in _arrivals(len(requests), args.request_rate,
                                                                                  random.Random(args.seed + 1))]
        results = await asyncio.gather(*tasks)
        if prober is not None:
            prober.cancel()
        return list(results), time.perf_counter() - start, probes


async def _probe_health(client, latencies: list[float]) -> None:
    """GET /health every 50 ms until cancelled; each answer's latency in seconds (a failure: inf)."""
    while True:
        start = time.perf_counter()
        try:
            ok = (await client.get("/health")).status_code == 200
        except Exception:  # a timeout or a dropped connection counts as no answer
            ok = False
        latencies.append(time.perf_counter() - start if ok else math.inf)
        await asyncio.sleep(0.05)


async def _served_model(client) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def _stats(name: str, values: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {f"mean_{name}_ms": 0.0, f"median_{name}_ms": 0.0, f"p99_{name}_ms": 0.0}
    p99 = ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)]
    return {f"mean_{name}_ms": statistics.fmean(ms), f"median_{name}_ms": statistics.median(ms), f"p99_{name}_ms": p99}


def summarize(results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    inputs, outputs = sum(r.prompt_tokens for r in done), sum(r.output_tokens for r in done)
    report = {
        "num_prompts": len(results), "completed": len(done), "failed": len(results) - len(done), "duration": duration,
        "total_input_tokens": inputs, "total_output_tokens": outputs,
        "request_throughput": len(done) / duration, "output_throughput": outputs / duration,
        "total_token_throughput": (inputs + outputs) / duration,
    }
    for name, values in (("ttft", [r.ttft for r in done]), ("tpot", tpot),
                         ("itl", [gap for r in done for gap in r.itl]), ("e2el", [r.latency for r in done])):
        report.update(_stats(name, values))
    report["errors"] = sorted({r.error for r in results if not r.ok})
    return report


def print_report(report: dict) -> None:
    print("{:=^60}".format(" Serving Benchmark Result "))
    for key in ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput"):
        value = report[key]
        print(f"{key.replace('_', ' '):<40}{value:>20.2f}" if isinstance(value, float) else f"{key.replace('_', ' '):<40}{value:>20}")
    for name, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                        ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        print("{:-^60}".format(title))
        for stat in ("mean", "median", "p99"):
            print(f"{stat.capitalize() + ' ' + name.upper() + ' (ms)':<40}{report[f'{stat}_{name}_ms']:>20.2f}")
    if "health_probes" in report:
        print("{:-^60}".format("GET /health during the run"))
        for stat in ("mean", "median", "p99"):
            print(f"{stat.capitalize() + ' (ms)':<40}{report[f'{stat}_health_ms']:>20.2f}")
        probes = f"{report['health_probes']} ({report['health_failures']})"
        print(f"{'probes (unanswered)':<40}{probes:>20}")
    for error in report["errors"][:5]:
        print(f"error: {error}")
    print("=" * 60)


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(argv or [])
    args.api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    requests = DATASETS[args.dataset](args, _tokenizer(args.tokenizer))
    if not requests:
        raise SystemExit(f"dataset {args.dataset!r} gave no prompts")
    results, duration, probes = asyncio.run(run(args, requests))
    config = {k: (str(v) if v == math.inf else v) for k, v in vars(args).items() if k != "api_key"}  # JSON has no inf
    report = {"config": config, **summarize(results, duration)}
    if probes:
        report.update(_stats("health", [p for p in probes if p != math.inf]))
        report["health_probes"], report["health_failures"] = len(probes), sum(p == math.inf for p in probes)
    print_report(report)
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["completed"] else 1
