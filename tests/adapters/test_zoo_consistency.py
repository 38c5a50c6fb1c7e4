"""Strict consistency across the zoo: the Transformers backend's greedy tokens equal plain
Transformers' greedy tokens (float32, same checkpoint), for every architecture we claim, for a
batch of mixed-length prompts (1..65 tokens: across 16-token blocks and the 8-token windows)."""

import pytest

from anymodel import LLM, SamplingParams
from tests.models.zoo import COMPAT_ARCHS, CUSTOM_ARCH, ZOO, build_tiny_model, hf_greedy, mixed_prompts

MAX_TOKENS = 8
ARCHS = [*ZOO, CUSTOM_ARCH]


def _first_mismatch(got: list[list[int]], want: list[list[int]]) -> str:
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            step = next((j for j, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            return f"prompt {i} step {step}: got {g} want {w}"
    return f"{len(got)} outputs for {len(want)} prompts"


@pytest.fixture(scope="module", params=ARCHS)
def arch_case(request, tmp_path_factory):
    arch = request.param
    path = build_tiny_model(arch, tmp_path_factory.mktemp(arch))
    prompts = mixed_prompts(path)
    return arch, path, prompts, hf_greedy(path, prompts, MAX_TOKENS)


def test_greedy_matches_transformers(arch_case):
    arch, path, prompts, reference = arch_case
    llm = LLM(model=str(path), model_impl="transformers", dtype="float32", seed=0,
              trust_remote_code=arch == CUSTOM_ARCH)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    path_kind = "compat" if arch in COMPAT_ARCHS else "attention interface"
    assert got == reference, f"{arch} ({path_kind}): {_first_mismatch(got, reference)}"


def test_custom_model_needs_trust_remote_code(tmp_path):
    path = build_tiny_model(CUSTOM_ARCH, tmp_path / CUSTOM_ARCH)
    with pytest.raises(ValueError, match="trust_remote_code"):
        LLM(model=str(path), dtype="float32")
