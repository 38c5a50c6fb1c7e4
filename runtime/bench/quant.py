"""`anymodel bench quant`: tokens/s and weight bytes of float32 against each quantized format, same
process, same random model (its decoder linears quantized by each format's rules, bench/quantize.py).

    python -m anymodel.bench quant                        (preset small: 512 hidden, 4 layers)
    python -m anymodel.bench quant --preset llama-125m --model-impl transformers --formats fp8-block,w4a16

On CPU a quantized linear dequantizes its weight every forward (the torch reference), so the memory
ratio is the headline and tokens/s pays for the dequantization; greedy agreement with float32 is
reported (quantization changes the weights: no token-identity promise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from anymodel.bench import quantize
from anymodel.bench.generation import PRESETS, make_prompts
from anymodel.bench.systems import prepare_model_dir

SMALL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
             intermediate_size=1536, vocab_size=4096, max_position_embeddings=512)
FORMATS = {  # name -> the format, given the group (and block) size
    "fp8-block": lambda g: quantize.block_fp8((g, g)),
    "ct-fp8-channel": lambda g: quantize.compressed_tensors(
        "float-quantized", {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True}),
    "w8a16": lambda g: quantize.compressed_tensors(
        "pack-quantized", {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True}),
    "w4a16": lambda g: quantize.compressed_tensors(
        "pack-quantized", {"num_bits": 4, "type": "int", "strategy": "group", "group_size": g, "symmetric": True}),
    "awq": lambda g: quantize.awq(g),
    "gptq": lambda g: quantize.gptq(4, g),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench quant", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["small", *sorted(PRESETS)], default="small")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {list(FORMATS)}")
    p.add_argument("--group-size", type=int, default=128, help="group size (and FP8 block edge); 128")
    p.add_argument("--model-impl", choices=["native", "transformers"], default="native")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    unknown = sorted(set(args.formats.split(",")) - set(FORMATS))
    if unknown:
        p.error(f"unknown format(s) {unknown}; supported: {list(FORMATS)}")
    return args


def measure(model_dir: Path, args, prompts) -> dict:
    """Weight bytes, median output tokens/s over repeats (after one warm-up), greedy tokens."""
    from anymodel import LLM, SamplingParams
    from anymodel.native_overrides.quantization.layers import weight_bytes

    llm = LLM(str(model_dir), dtype="float32", model_impl=args.model_impl, num_kv_blocks=64)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(inputs[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    rates, tokens = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        rates.append(len(prompts) * args.output_len / (time.perf_counter() - start))
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
    size = llm.apply_model(lambda m: weight_bytes(m))[0]
    llm.engine.shutdown()
    return {"weight_bytes": size, "output_tok_s": statistics.median(rates), "tokens": tokens}


def run(args, workdir: Path) -> dict:
    preset = SMALL if args.preset == "small" else PRESETS[args.preset]
    plain, _, vocab = prepare_model_dir(None, preset, workdir, seed=0)
    prompts = make_prompts(args.num_prompts, args.input_len, vocab, seed=0)
    results = {"float32": measure(plain, args, prompts)}
    for name in args.formats.split(","):
        quant_dir = workdir / name
        quantize.quantize_checkpoint(plain, quant_dir, FORMATS[name](args.group_size))
        results[name] = measure(quant_dir, args, prompts)
    return results


def print_report(results: dict, args) -> None:
    base = results["float32"]
    print(f"\nquant: preset {args.preset}, {args.model_impl}, {args.num_prompts} prompts x {args.input_len} in / "
          f"{args.output_len} out, greedy, median of {args.repeats}")
    header = f"{'format':<16}{'weights MiB':>12}{'x fp32':>8}{'out tok/s':>11}{'x fp32':>8}  greedy = fp32"
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["tokens"], base["tokens"]))
        print(f"{name:<16}{r['weight_bytes'] / 2**20:>12.2f}{r['weight_bytes'] / base['weight_bytes']:>8.3f}"
              f"{r['output_tok_s']:>11.1f}{r['output_tok_s'] / base['output_tok_s']:>8.3f}  {same}/{len(r['tokens'])}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="anymodel-bench-quant-") as tmp:
        print_report(run(args, Path(tmp)), args)
    return 0
