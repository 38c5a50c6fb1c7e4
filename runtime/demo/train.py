"""Train the embedded demo model (a tiny Llama that adds numbers) on CPU and save it to demo/model/.

    python -m anymodel.demo.train            # or: python runtime/demo/train.py

Sequences are "<s>123+4567=4690</s>"; only the answer and </s> carry loss. Every step draws fresh
problems from the training side of the hash split, so held-out problems are never seen.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

if __package__:
    from anymodel.demo import DEMO_MODEL_DIR, MAX_DIGITS, addition_problems, format_prompt, is_held_out, random_operand
else:  # run as a file: `anymodel` maps to runtime/, so load the sibling __init__.py directly
    import importlib.util

    _spec = importlib.util.spec_from_file_location("_demo", Path(__file__).with_name("__init__.py"))
    _demo = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_demo)
    DEMO_MODEL_DIR, MAX_DIGITS, addition_problems = _demo.DEMO_MODEL_DIR, _demo.MAX_DIGITS, _demo.addition_problems
    format_prompt, is_held_out, random_operand = _demo.format_prompt, _demo.is_held_out, _demo.random_operand

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("0123456789+=")
# ~0.45M parameters (1.8 MB in float32). A GPU sweep on uniform problems: 2 layers plateau near 95%;
# 3 layers reach 97-99.6% (by seed) after 6000 x 128 examples; a 512 MLP or 4 layers cost 2x the CPU
# for little gain. The misses are carry chains through 9-sums, hence carry_chain_pair and --extra.
MODEL_SHAPE = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, max_position_embeddings=64, tie_word_embeddings=True)
TARGET = 0.99  # held-out exact match the saved model must reach
FLOOR = 0.05  # the schedule ends at 5% of the peak learning rate
CARRY_SHARE = 0.25  # share of training problems from carry_chain_pair
# The user writes "12+34" (spaces and a trailing "=" tolerated); "=" is the cue for the answer, so
# it is the generation prompt. An assistant turn is "=answer</s>"; system messages are ignored.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set q = message['content'] | replace(' ', '') -%}"
    "{{ bos_token }}{{ q[:-1] if q.endswith('=') else q }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "={{ message['content'] | trim }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}={%- endif -%}"
)


def build_tokenizer():
    """Character-level WordLevel tokenizer: 16 tokens; encode() prepends <s>, decode() joins chars."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Fuse()  # "4","6" -> "46", not "4 6"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        chat_template=CHAT_TEMPLATE, model_max_length=64,
    )


def build_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), **MODEL_SHAPE, rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    return model


def make_batch(tokenizer, problems: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, L] right-padded, labels [B, L] with -100 everywhere but answer + </s>."""
    prompts = tokenizer([p for p, _ in problems])["input_ids"]  # <s> + prompt chars
    answers = tokenizer([a for _, a in problems], add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for p, a in zip(prompts, answers):
        rows.append(p + a + [tokenizer.eos_token_id])
        masks.append([False] * len(p) + [True] * (len(a) + 1))
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    keep = torch.tensor([mask + [False] * (width - len(mask)) for mask in masks])
    # Right padding needs no attention mask: causal attention never looks ahead at the pads.
    return ids, torch.where(keep, ids, -100)


def carry_chain_pair(rng: random.Random) -> tuple[int, int]:
    """A run of digit pairs summing to 9 (e.g. 4567+5432, 4567+5433) whose leading answer digits depend on
    the one pair below the run: a carry born there ripples up, or not. Uniform sampling rarely shows
    these, and they are what a small model gets wrong last (it learns "9-run -> carry" unless both occur)."""
    a = random_operand(rng)
    width = rng.randint(1, MAX_DIGITS)
    born = rng.randrange(width)
    carry = rng.random() < 0.5
    digits = []
    for i in range(width):
        a_i = (a // 10**i) % 10
        if i == born and carry and a_i > 0:
            digits.append(rng.randint(10 - a_i, 9))  # a_i + b_i >= 10: a carry starts here
        elif i == born and a_i < 9:
            digits.append(rng.randint(0, 8 - a_i))  # a_i + b_i <= 8: no carry
        elif i > born and rng.random() < 0.8:
            digits.append(9 - a_i)  # sums to 9: passes on whatever comes from below
        else:
            digits.append(rng.randint(0, 9))
    if width > 1 and digits[-1] == 0:
        digits[-1] = rng.randint(1, 9)  # no leading zero
    b = sum(d * 10**i for i, d in enumerate(digits))
    return (a, b) if rng.random() < 0.5 else (b, a)


def training_problems(n: int, seed: int) -> list[tuple[str, str]]:
    """Like addition_problems(held_out=False), with CARRY_SHARE of carry_chain_pair mixed in."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        use_carry = rng.random() < CARRY_SHARE
        a, b = carry_chain_pair(rng) if use_carry else (random_operand(rng), random_operand(rng))
        if not is_held_out(a, b):
            problems.append((format_prompt(a, b), str(a + b)))
    return problems


@torch.no_grad()
def accuracy(model, tokenizer, problems: list[tuple[str, str]]) -> float:
    """Exact match with HF greedy generate; prompts are grouped by length so no padding is needed."""
    model.eval()
    by_len: dict[int, list[tuple[list[int], str]]] = {}
    for prompt, answer in problems:
        ids = tokenizer.encode(prompt)
        by_len.setdefault(len(ids), []).append((ids, answer))
    correct = 0
    for group in by_len.values():
        ids = torch.tensor([g[0] for g in group], device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        correct += sum(t == answer for t, (_, answer) in zip(texts, group))
    model.train()
    return correct / len(problems)


def lr_at(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warmup, then cosine decay to FLOOR of the peak (the rate any extra steps keep)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return peak * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tokenizer, opt, steps: range, schedule, batch_size: int, seed: int) -> None:
    """AdamW over `steps`; step i always sees the same batch, so a run can be extended reproducibly."""
    start = time.perf_counter()
    for step in steps:
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        ids, labels = make_batch(tokenizer, training_problems(batch_size, seed * 1_000_003 + step))
        loss = model(input_ids=ids.to(model.device), labels=labels.to(model.device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 500 == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000, help="length of the cosine schedule")
    ap.add_argument("--extra", type=int, default=4, help="at most this many 1000-step rounds until >= 99%%")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    # One thread: on a busy 2-core box two OpenMP threads ran ~10x slower, and one keeps runs bitwise
    # reproducible on a given machine.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.1)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {args.steps} steps of {args.batch_size}")
    val = addition_problems(1000, seed=args.seed + 1, held_out=True)  # decides when to stop
    start, done = time.perf_counter(), args.steps
    train(model, tokenizer, opt, range(done), lambda s: lr_at(s, args.steps, args.lr), args.batch_size, args.seed)
    for _ in range(args.extra):
        acc = accuracy(model, tokenizer, val)
        print(f"after {done} steps: held-out accuracy {acc:.2%}", flush=True)
        if acc >= TARGET:
            break
        # A slow tail (long carry chains) still improving: more steps at the floor rate.
        train(model, tokenizer, opt, range(done, done + 1000), lambda s: args.lr * FLOOR, args.batch_size, args.seed)
        done += 1000
    final = accuracy(model, tokenizer, addition_problems(2000, seed=12345, held_out=True))
    print(f"trained in {time.perf_counter() - start:.0f}s; held-out exact match (HF generate, 2000): {final:.2%}")
    model.save_pretrained(args.out)  # safetensors (the only format transformers 5 writes)
    tokenizer.save_pretrained(args.out, save_jinja_files=False)  # chat_template inside tokenizer_config.json
    print(f"saved to {args.out}")
    if final < TARGET:
        sys.exit(f"held-out accuracy below {TARGET:.0%}: train longer (--steps) or try another --seed")


if __name__ == "__main__":
    main()
