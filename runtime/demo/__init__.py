"""The embedded demo model: a tiny Llama that adds two 1-4 digit numbers, char by char.

    prompt "123+4567="  ->  answer "4690" then </s>      (the tokenizer prepends <s>)

`python -m anymodel.demo.train` retrains it into `model/`; `python -m anymodel.demo` runs it.
Imports stay light (no torch) so `anymodel.loader` can read DEMO_MODEL_DIR cheaply.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
MAX_DIGITS = 4  # per operand; answers have up to 5 digits
HELD_OUT_PERCENT = 10  # share of all (a, b) pairs that training never sees


def is_held_out(a: int, b: int) -> bool:
    """A fixed split by a hash of the pair: the same on every machine and in every run."""
    digest = hashlib.blake2b(f"{a}+{b}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < HELD_OUT_PERCENT


def format_prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def random_operand(rng: random.Random) -> int:
    # Uniform over the digit count first, so 4-digit numbers don't swamp the short ones.
    digits = rng.randint(1, MAX_DIGITS)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def addition_problems(n: int, seed: int, held_out: bool = True) -> list[tuple[str, str]]:
    """n (prompt, answer) pairs, e.g. ("123+4567=", "4690"), from the held-out or the training side."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        a, b = random_operand(rng), random_operand(rng)
        if is_held_out(a, b) == held_out:
            problems.append((format_prompt(a, b), str(a + b)))
    return problems
