"""`anymodel bench moe` / `python -m anymodel.bench moe`: the MoE experts paths, same process, same model.

One tiny-but-not-trivial MoE (Qwen3-MoE layout, random seeded weights, float32; default 16 experts,
top-2, hidden 512, 8 layers) is loaded once by our engine (Transformers backend), and the experts
of every layer are switched between

    anymodel     our registered experts function (adapters/experts.py)
    grouped_mm   Transformers' grouped_mm experts function (its default)
    eager        Transformers' per-expert loop (the class's own forward)

and beside them a dense Qwen3 with the same active parameters (one MLP top_k x the expert width),
whose decode the MoE's should approach.

for two workloads: 16 requests x 64 in / 64 out (throughput) and 1 request x 64 / 64 (b=1 decode).
Everything else (attention, scheduler, sampler) is the same code, so the ratios are the experts
paths'. Runs are round-robin over repeats (median kept); greedy tokens of every path are checked
against `anymodel`'s and mismatches reported.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

PATHS = ("anymodel", "grouped_mm", "eager")
DENSE = "dense"  # the dense model with the same active parameters (its own tokens)
WORKLOADS = {"b16": dict(num_prompts=16, input_len=64, output_len=64), "b1": dict(num_prompts=1, input_len=64, output_len=64)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench moe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--moe-intermediate", type=int, default=256, help="each expert's intermediate size (256)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--output-len", type=int, default=64, help="new tokens per request in both workloads (64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", dest="json_path", help="write every figure here")
    args = p.parse_args(argv)
    for key in ("experts", "top_k", "hidden", "moe_intermediate", "layers", "vocab", "output_len", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.top_k > args.experts:
        p.error(f"--top-k ({args.top_k}) must be <= --experts ({args.experts})")
    return args


def moe_config(args: argparse.Namespace):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        head_dim=args.hidden // 8, intermediate_size=4 * args.moe_intermediate, moe_intermediate_size=args.moe_intermediate,
        num_experts=args.experts, num_experts_per_tok=args.top_k, norm_topk_prob=True, decoder_sparse_step=1,
        vocab_size=args.vocab, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)


def dense_config(args: argparse.Namespace):
    """The dense model with the MoE's active parameters: one MLP of top_k x the expert's width."""
    from transformers import Qwen3Config

    moe = moe_config(args)
    return Qwen3Config(**{k: getattr(moe, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")},
        intermediate_size=args.top_k * args.moe_intermediate)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    from anymodel.bench.generation import make_prompts, summarize, token_check

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = {name: make_prompts(w["num_prompts"], w["input_len"], args.vocab, args.seed) for name, w in WORKLOADS.items()}
    moe, dense = _system(moe_config(args), workdir / "moe", args), _system(dense_config(args), workdir / "dense", args)
    runs = {(w, p): [] for w in WORKLOADS for p in (*PATHS, DENSE)}
    for path in (*PATHS, DENSE):  # warm-up
        _select(moe, dense, path).run([q[:8] for q in prompts["b16"][:2]], 4)
    for _ in range(args.repeats):  # round-robin: machine noise hits every path alike
        for workload in WORKLOADS:
            for path in (*PATHS, DENSE):
                runs[(workload, path)].append(_select(moe, dense, path).run(prompts[workload], args.output_len))
    _select(moe, dense, PATHS[0])
    paths_seen = moe.llm.apply_model(_paths)[0]
    moe.close()
    dense.close()
    results = {}
    for (workload, path), rs in runs.items():
        figures = summarize(rs, WORKLOADS[workload]["num_prompts"] * WORKLOADS[workload]["input_len"])
        reference = runs[(workload, DENSE if path == DENSE else PATHS[0])][-1].tokens  # the dense model is another model
        figures["tokens"] = token_check(rs[-1].tokens, reference)
        results[f"{workload} {path}"] = figures
    return {"config": {k: getattr(args, k) for k in ("experts", "top_k", "hidden", "moe_intermediate", "layers", "vocab")},
            "output_len": args.output_len, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "experts_modules": paths_seen, "results": results, "ratios": ratios(results)}


def _system(config, model_dir: Path, args: argparse.Namespace):
    from anymodel.bench.systems import AnymodelSystem, write_random_checkpoint, write_word_tokenizer

    write_random_checkpoint(config, model_dir, args.seed)
    write_word_tokenizer(args.vocab, model_dir)
    biggest = max(w["num_prompts"] for w in WORKLOADS.values())
    return AnymodelSystem(model_dir, None, "transformers", biggest, 64 + args.output_len)


def _select(moe, dense, path: str):
    """The system that runs `path`, its experts switched to it."""
    from anymodel.adapters.experts import select_experts

    if path == DENSE:
        return dense
    moe.llm.apply_model(functools.partial(select_experts, name=path))
    return moe


def _paths(model) -> dict:
    from anymodel.adapters.experts import experts_paths

    return experts_paths(model)


def ratios(results: dict) -> dict:
    """anymodel's throughput over each Transformers path and over the dense model, per workload."""
    out = {}
    for workload in WORKLOADS:
        ours = results[f"{workload} anymodel"]
        for path in (*PATHS[1:], DENSE):
            theirs = results[f"{workload} {path}"]
            out[f"{workload}: anymodel / {path}"] = {k: ours[k] / theirs[k] for k in ("output_tok_s", "decode_tok_s")}
    return out


def print_report(report: dict) -> None:
    from anymodel.bench.generation import print_ratios, token_match_text

    c = report["config"]
    print(f"\nmoe: Qwen3-MoE layout, {c['experts']} experts top-{c['top_k']}, hidden {c['hidden']}, expert intermediate "
          f"{c['moe_intermediate']}, {c['layers']} layers, fp32, median of {report['repeats']}, {report['threads']} threads")
    print(f"workloads: b16 = 16 requests, b1 = 1 request; 64 tokens in, {report['output_len']} out; "
          f"experts modules: {report['experts_modules']}")
    header = f"{'workload / experts path':<26}{'out tok/s':>11}{'ITL ms':>9}{'decode tok/s':>14}  tokens"
    print(header + "\n" + "-" * len(header))
    for name, r in report["results"].items():
        match = "another model" if name.endswith(DENSE) else token_match_text(r["tokens"], "anymodel")
        print(f"{name:<26}{r['output_tok_s']:>11.1f}{r['itl_ms']:>9.2f}{r['decode_tok_s']:>14.1f}  {match}")
    print_ratios(report["ratios"], 32)


def main(argv: list[str] | None = None) -> int:
    from anymodel.bench.generation import run_report

    return run_report(parse_args(list(sys.argv[1:] if argv is None else argv)), run, print_report)
