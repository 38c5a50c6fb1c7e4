"""`anymodel bench structured`: 16 concurrent JSON-schema requests against the same requests
unconstrained, same process, same model; prints the throughput ratio (constrained / unconstrained).

    python -m anymodel.bench structured                      (llama-125m preset, random weights, CPU)
    python -m anymodel.bench structured --preset tiny --repeats 1

The model has seeded random weights and a byte-level BPE tokenizer trained here (so that JSON can
be spelled, with a vocabulary of realistic size for the mask work). Greedy; the unconstrained run
ignores EOS and makes exactly --output-len tokens per request; the constrained run makes up to as
many (it may end earlier, at EOS after the JSON closes), so throughput is output tokens per second.
The grammar is compiled once in the warm-up (then cached), as a server sees a repeated schema.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from anymodel.bench.generation import PRESETS

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
                   "tags": {"type": "array", "items": {"type": "string"}},
                   "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                                "zip": {"type": "string"}}}},
    "required": ["name", "age", "tags"],
}
WORDS = ("the of and to in is was for on that with as by at from his her they have this which name age city "
         "email address tags value true false null json object array string number key data user").split()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anymodel bench structured", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama-125m")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--tokenizer-vocab", type=int, default=8192, help="BPE vocabulary trained for the bench")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    return p.parse_args(argv)


def write_bpe_tokenizer(out: Path, vocab: int, seed: int = 0) -> None:
    """A byte-level BPE trained on seeded word salad, with <pad> <s> </s> <unk> at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = [" ".join(rng.choice(WORDS) if rng.random() < 0.5 else
                      "".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(20))
             for _ in range(max(1000, 3 * vocab))]  # enough text for `vocab` merges
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(out))


def timed(llm, prompts: list[str], params) -> tuple[float, int, list]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs), outs


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from anymodel import LLM, SamplingParams, StructuredOutputsParams
    from anymodel.bench.systems import prepare_model_dir

    preset = dict(PRESETS[args.preset], vocab_size=max(PRESETS[args.preset]["vocab_size"], args.tokenizer_vocab))
    model_dir, _, _ = prepare_model_dir(None, preset, workdir, 0)
    write_bpe_tokenizer(model_dir, args.tokenizer_vocab)
    llm = LLM(str(model_dir), dtype="float32", max_num_seqs=args.num_prompts)
    rng = random.Random(1)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(args.num_prompts)]
    systems = {"unconstrained": SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True),
               "json_schema": SamplingParams(temperature=0, max_tokens=args.output_len,
                                             structured_outputs=StructuredOutputsParams(json=SCHEMA))}
    compile_s = timed(llm, prompts[:1], systems["json_schema"])[0]  # warm-up: compiles and caches the grammar
    timed(llm, prompts, systems["unconstrained"])
    rates: dict[str, list[float]] = {name: [] for name in systems}
    finished = {}
    for _ in range(args.repeats):  # round-robin: machine noise spreads over both
        for name, params in systems.items():
            elapsed, tokens, outs = timed(llm, prompts, params)
            rates[name].append(tokens / elapsed)
            finished[name] = sum(o.outputs[0].finish_reason == "stop" for o in outs)
    tok_s = {name: statistics.median(r) for name, r in rates.items()}
    return dict(preset=args.preset, num_prompts=args.num_prompts, output_len=args.output_len,
                tokenizer_vocab=args.tokenizer_vocab, first_request_with_compile_s=compile_s, tok_s=tok_s,
                ratio=tok_s["json_schema"] / tok_s["unconstrained"], json_finished_with_stop=finished["json_schema"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="anymodel-bench-structured-") as tmp:
        r = run(args, Path(tmp))
    print(f"structured outputs: {r['num_prompts']} concurrent requests, {r['output_len']} tokens, preset {r['preset']}, "
          f"tokenizer vocab {r['tokenizer_vocab']}")
    for name, rate in r["tok_s"].items():
        print(f"  {name:14s} {rate:10.1f} output tok/s")
    print(f"  ratio json_schema / unconstrained: {r['ratio']:.3f}   (first request incl. grammar compile: "
          f"{r['first_request_with_compile_s']:.2f} s; {r['json_finished_with_stop']} of {r['num_prompts']} JSON "
          "outputs closed before max tokens)")
    return 0
