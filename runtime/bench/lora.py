"""`python -m anymodel.bench lora` (`anymodel bench lora`): the cost of serving LoRA adapters.

    python -m anymodel.bench lora --preset llama-125m           16 prompts over 4 adapters vs 16 on the base
    python -m anymodel.bench lora --preset tiny --repeats 1     (CI-sized)

One engine (enable_lora=True, max_loras = the adapter count) runs the same prompts twice per
repeat, round-robin: every request on the base model, then the requests spread over the adapters
(rank `--rank`, every linear of every layer adapted; random PEFT-format weights written here). The
figure is output tokens/s, median over repeats; the ratio adapters / base is the price of LoRA
(target >= 0.8 on CPU: the adapter GEMMs are small next to the base ones).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from anymodel.bench.generation import PRESETS, make_prompts, run_bench
from anymodel.bench.systems import prepare_model_dir

TARGETS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama-125m")
    p.add_argument("--model-impl", choices=["native", "transformers"], default="native")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--num-adapters", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", dest="json_path", help="write the figures here")
    args = p.parse_args(argv)
    for key in ("num_prompts", "num_adapters", "rank", "input_len", "output_len", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def write_random_adapter(config, out: Path, rank: int, seed: int) -> Path:
    """A PEFT-format adapter of a Llama-shaped `config`: every projection of every layer, A and B
    ~ N(0, 1/sqrt(fan_in)), lora_alpha = rank (scale 1)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    h, i, d = config["hidden_size"], config["intermediate_size"], config["hidden_size"] // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * d
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # (in, out)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for block, names in TARGETS.items():
            for name in names:
                n_in, n_out = shapes[name]
                key = f"base_model.model.model.layers.{layer}.{block}.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen) * n_in**-0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen) * rank**-0.5
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    targets = [n for names in TARGETS.values() for n in names]
    (out / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": targets, "bias": "none"}))
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    from anymodel import LLM, LoRARequest, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, tokenizer, vocab = prepare_model_dir(None, PRESETS[args.preset], workdir, args.seed)
    config = json.loads((model_dir / "config.json").read_text())
    adapters = [LoRARequest(f"adapter-{k}", k + 1, str(write_random_adapter(config, workdir / f"lora{k}", args.rank,
                                                                              args.seed + k)))
                for k in range(args.num_adapters)]
    llm = LLM(str(model_dir), tokenizer=str(tokenizer) if tokenizer else None, dtype="float32",
              model_impl=args.model_impl, enable_lora=True, max_loras=args.num_adapters, max_lora_rank=args.rank)
    prompts = [{"prompt_token_ids": p} for p in make_prompts(args.num_prompts, args.input_len, vocab, args.seed)]
    workloads = {"base": [None] * len(prompts),
                 "adapters": [adapters[k % len(adapters)] for k in range(len(prompts))]}
    sp = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    for loras in workloads.values():  # warm-up: every adapter in its slot, every code path taken once
        llm.generate(prompts[: len(adapters)], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True),
                     use_tqdm=False, lora_request=loras[: len(adapters)])
    tok_s: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(args.repeats):  # round-robin: machine noise hits both alike
        for name, loras in workloads.items():
            start = time.perf_counter()
            outs = llm.generate(prompts, sp, use_tqdm=False, lora_request=loras)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            tok_s[name].append(tokens / (time.perf_counter() - start))
    results = {name: statistics.median(v) for name, v in tok_s.items()}
    return {"preset": args.preset, "model_impl": args.model_impl, "num_prompts": args.num_prompts,
            "num_adapters": args.num_adapters, "rank": args.rank, "input_len": args.input_len,
            "output_len": args.output_len, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "output_tok_s": results, "ratio": results["adapters"] / results["base"]}


def print_report(r: dict) -> None:
    print(f"\nlora: preset {r['preset']} ({r['model_impl']}), {r['num_prompts']} prompts x {r['input_len']} in / "
          f"{r['output_len']} out, {r['num_adapters']} adapters of rank {r['rank']}, median of {r['repeats']}, "
          f"{r['threads']} threads")
    for name, value in r["output_tok_s"].items():
        print(f"  {name:<10}{value:>10.1f} output tok/s")
    print(f"  adapters / base: x{r['ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(list(sys.argv[1:] if argv is None else argv)), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
