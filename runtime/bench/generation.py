"""`anymodel bench throughput|latency`: anymodel against plain Transformers, same process, same model.

    anymodel bench throughput --preset llama-125m --model-impl both --compare hf --json out.json
    anymodel bench latency --preset llama-125m --compare hf          (batch 1: TTFT, ITL, decode tok/s,
                                                                      and the step against the bandwidth floor)
    python -m anymodel.bench throughput --preset tiny                (CI-sized)

The model is a checkpoint dir (`--model`; random weights are written when it holds only a
config.json) or a built-in preset with seeded random weights. The workload is fixed: random prompt
token ids (seeded), greedy, EOS ignored, exactly `--output-len` new tokens per prompt. Every system
runs `--repeats` times, round-robin so that machine noise spreads evenly, after one warm-up; each
figure is the median over repeats. Greedy tokens of every system are checked against the first
(plain `generate` when `--compare hf`); mismatches are reported, never hidden.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from anymodel.bench.floor import Floor, decode_weight_bytes, measure_floor
from anymodel.bench.systems import AnymodelSystem, RunResult, build_systems, prepare_model_dir

PRESETS = {
    # 768 hidden, 12 layers, 12 heads / 4 KV heads, 2048 FFN, 32000 vocab (float32)
    "llama-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                       intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=512),
}
MODES = {"throughput": dict(num_prompts=16, input_len=64, output_len=64), "latency": dict(num_prompts=1, input_len=64, output_len=64)}
FIGURES = ("elapsed_s", "output_tok_s", "total_tok_s", "ttft_ms", "itl_ms", "decode_tok_s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model dir (config.json, weights optional: random when absent)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="built-in config with random weights (default llama-125m)")
    p.add_argument("--num-prompts", "--batch-size", dest="num_prompts", type=int, help="prompts (16; latency: 1)")
    p.add_argument("--input-len", type=int, help="prompt tokens (64)")
    p.add_argument("--output-len", type=int, help="new tokens per prompt (64)")
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="prompt lengths drawn uniformly from [input-len * (1 - r), input-len * (1 + r)] (default 0: "
                        "fixed); output lengths stay fixed, so plain generate's batch does the same work")
    p.add_argument("--model-impl", choices=["native", "transformers", "both"], default="native")
    p.add_argument("--compare", choices=["hf", "none"], default="none", help="hf: also plain generate + continuous batching")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", dest="json_path", help="write every figure here")
    p.add_argument("--bandwidth-mb", type=int, default=500,
                   help="latency: MiB of the tensor whose x.sum() measures streaming bandwidth (500)")
    args = p.parse_args(argv)
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model is None and args.preset is None:
        args.preset = "llama-125m"
    for key in ("num_prompts", "input_len", "output_len", "repeats", "bandwidth_mb"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.random_range_ratio < 1.0:
        p.error(f"--random-range-ratio must be in [0, 1), got {args.random_range_ratio}")
    return args


def make_prompts(n: int, length: int, vocab: int, seed: int, range_ratio: float = 0.0) -> list[list[int]]:
    """`n` prompts of random ids; lengths drawn from [length * (1 - r), length * (1 + r)] (r = 0: all `length`)."""
    rng = random.Random(seed)  # ids 0..3 are left out: pad / bos / eos / unk in the preset tokenizer
    low, high = max(1, int(length * (1 - range_ratio))), max(1, int(length * (1 + range_ratio)))
    lengths = [rng.randint(low, high) if range_ratio else length for _ in range(n)]
    return [[rng.randrange(4, vocab) for _ in range(k)] for k in lengths]


def summarize(runs: list[RunResult], num_input_tokens: int) -> dict:
    """Median over repeats of each per-run figure."""
    per_run = [r.figures(num_input_tokens) for r in runs]
    return {k: statistics.median(f[k] for f in per_run) for k in FIGURES}


def token_check(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    bad = [i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b]
    first = None
    if bad:
        a, b = tokens[bad[0]], reference[bad[0]]
        first = {"prompt": bad[0], "position": next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))}
    return {"matching_prompts": len(tokens) - len(bad), "num_prompts": len(tokens), "first_mismatch": first}


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, tokenizer, vocab = prepare_model_dir(args.model, PRESETS.get(args.preset), workdir, args.seed)
    prompts = make_prompts(args.num_prompts, args.input_len, vocab, args.seed, args.random_range_ratio)
    longest = max(len(p) for p in prompts)
    systems = build_systems(model_dir, tokenizer, args.model_impl, args.compare == "hf", len(prompts), longest + args.output_len)
    warmup = [p[:8] for p in prompts[:2]]
    for system in systems:
        system.run(warmup, 4)
    runs = {s.name: [] for s in systems}
    for _ in range(args.repeats):  # round-robin: noise from the machine hits every system alike
        for system in systems:
            runs[system.name].append(system.run(prompts, args.output_len))
    floor = measure_step_floor(systems, args.bandwidth_mb) if args.mode == "latency" else None
    for system in systems:
        system.close()
    reference = runs[systems[0].name][-1].tokens
    results = {}
    for name, rs in runs.items():
        results[name] = summarize(rs, sum(len(p) for p in prompts))
        results[name]["tokens"] = token_check(rs[-1].tokens, reference)
        if floor is not None:
            results[name]["floor_fraction"] = floor.fraction(results[name]["itl_ms"])
    return {"mode": args.mode, "model": args.model or f"preset:{args.preset}", "num_prompts": args.num_prompts,
            "input_len": args.input_len, "random_range_ratio": args.random_range_ratio, "output_len": args.output_len,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(), "reference": systems[0].name, "results": results,
            "ratios": ratios(results), "floor": None if floor is None else asdict(floor)}


def measure_step_floor(systems: list, bandwidth_mb: int) -> Floor:
    """The b=1 bandwidth floor (floor.py): the first anymodel system's weight matrices over the
    streaming bandwidth measured now, in this process."""
    ours = next(s for s in systems if isinstance(s, AnymodelSystem))
    weight_bytes = ours.llm.apply_model(decode_weight_bytes)[0]
    return measure_floor(weight_bytes, bandwidth_mb * 2**20)


def ratios(results: dict) -> dict:
    """Throughput of each anymodel system over each baseline, and transformers-backend / native."""
    out = {}
    ours = [n for n in results if n.startswith("anymodel")]
    for a in ours:
        for b in results:
            if b != a and (b.startswith("hf") or (a.endswith("transformers") and b.endswith("native"))):
                out[f"{a} / {b}"] = {
                    "output_tok_s": results[a]["output_tok_s"] / results[b]["output_tok_s"],
                    "decode_tok_s": results[a]["decode_tok_s"] / results[b]["decode_tok_s"],
                }
    return out


def print_report(report: dict) -> None:
    spread = f" (+-{report['random_range_ratio']:.0%})" if report["random_range_ratio"] else ""
    print(f"\n{report['mode']}: {report['model']}, {report['num_prompts']} prompts x {report['input_len']}{spread} in / "
          f"{report['output_len']} out, greedy, median of {report['repeats']}, {report['threads']} threads")
    floor = report["floor"]
    if floor:
        print(f"weight matrices {floor['weight_bytes'] / 1e6:.1f} MB, streaming bandwidth {floor['bandwidth'] / 1e9:.1f} GB/s "
              f"(best x.sum() now) -> bandwidth floor {floor['floor_ms']:.2f} ms per decode step")
    header = f"{'system':<24}{'out tok/s':>11}{'total tok/s':>13}{'TTFT ms':>10}{'ITL ms':>9}{'decode tok/s':>14}"
    header += f"{'floor/step':>12}  tokens" if floor else "  tokens"
    print(header + "\n" + "-" * len(header))
    for name, r in report["results"].items():
        match = token_match_text(r["tokens"], report["reference"])
        fraction = f"{r['floor_fraction']:>12.2f}" if floor else ""
        print(f"{name:<24}{r['output_tok_s']:>11.1f}{r['total_tok_s']:>13.1f}{r['ttft_ms']:>10.1f}{r['itl_ms']:>9.2f}"
              f"{r['decode_tok_s']:>14.1f}{fraction}  {match}")
    print_ratios(report["ratios"], 44)


def token_match_text(t: dict, reference: str) -> str:
    """A `token_check` result as the report prints it."""
    match = f"{t['matching_prompts']}/{t['num_prompts']} = {reference}"
    if t["first_mismatch"]:
        match += f" (first mismatch: prompt {t['first_mismatch']['prompt']}, token {t['first_mismatch']['position']})"
    return match


def print_ratios(ratios: dict, width: int) -> None:
    for name, r in ratios.items():
        print(f"{name:<{width}} throughput x{r['output_tok_s']:.2f}   per-request decode x{r['decode_tok_s']:.2f}")


def run_report(args: argparse.Namespace, run_fn, print_fn) -> int:
    """A bench's driver: run it in a temporary work dir, print the report, write it to --json."""
    with tempfile.TemporaryDirectory(prefix="anymodel-bench-") as tmp:
        report = run_fn(args, Path(tmp))
    print_fn(report)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_report(parse_args(list(sys.argv[1:] if argv is None else argv)), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
