"""Strict consistency across the zoo: the Transformers backend's greedy tokens equal plain
Transformers' greedy tokens (float32, same checkpoint), for every architecture we claim, for a
batch of mixed-length prompts (1..65 tokens: across 16-token blocks and the 8-token windows).
Each model must also take the path we expect: the paged attention interface, or the compat path
(its own attention, or recurrent state the paged cache cannot hold).

Target architectures anymodel does not serve are listed in KNOWN_UNSUPPORTED with the reason;
loading one must fail with a clear ValueError naming it, never run and give wrong tokens."""

import json

import pytest

from anymodel import LLM
from anymodel.adapters import experts
from tests.models.zoo import (
    COMPAT_ARCHS, CUSTOM_ARCH, EXPERTS_INTERFACE_ARCHS, OWN_EXPERTS_ARCHS, RECURRENT_ARCHS, SELF_CHECK_COMPAT_ARCHS,
    UNSUPPORTED_ZOO, ZOO, build_tiny_model, cached_model,
)
from tests.reference import greedy_case, llm_greedy

MAX_TOKENS = 8
ARCHS = [*ZOO, CUSTOM_ARCH]

# arch -> (the task its checkpoint is built for, the reason; the load error must match it).
KNOWN_UNSUPPORTED = {
    # vLLM lists BartForConditionalGeneration; Transformers would map its config to the decoder-only
    # BartForCausalLM and drop the encoder (random cross-attention, silently wrong tokens).
    "bart": ("seq2seq", "encoder-decoder model; anymodel serves decoder-only causal LMs"),
}


def _first_mismatch(got: list[list[int]], want: list[list[int]]) -> str:
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            step = next((j for j, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            return f"prompt {i} step {step}: got {g} want {w}"
    return f"{len(got)} outputs for {len(want)} prompts"


@pytest.fixture(scope="module", params=ARCHS)
def arch_case(request, tmp_path_factory):
    arch = request.param
    return (arch, *greedy_case(arch, tmp_path_factory.mktemp(arch), MAX_TOKENS))


def test_greedy_matches_transformers(arch_case, monkeypatch):
    arch, path, prompts, reference = arch_case
    calls = _count_experts_calls(monkeypatch)
    llm = LLM(model=str(path), model_impl="transformers", dtype="float32", seed=0,
              trust_remote_code=arch == CUSTOM_ARCH)
    path_kind = "compat" if arch in COMPAT_ARCHS | SELF_CHECK_COMPAT_ARCHS else "attention interface"
    expected_class = "CompatCausalLM" if path_kind == "compat" else "TransformersForCausalLM"
    assert llm.apply_model(lambda m: type(m).__name__) == [expected_class], f"{arch} should take the {path_kind} path"
    got = llm_greedy(llm, prompts, MAX_TOKENS)
    assert got == reference, f"{arch} ({path_kind}): {_first_mismatch(got, reference)}"
    _check_experts_path(arch, llm, calls)


def _count_experts_calls(monkeypatch) -> list[int]:
    """Count the calls of our experts function (the engine registers it at load; in-process executor)."""
    calls, forward = [0], experts.anymodel_experts_forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(experts, "anymodel_experts_forward", counted)
    return calls


def _check_experts_path(arch: str, llm, calls: list[int]) -> None:
    """Which experts path each MoE arch ran (printed: `pytest -s` lists them)."""
    paths = llm.apply_model(experts.experts_paths)[0]
    print(f"\n{arch}: experts {paths or 'none (dense)'}, {calls[0]} calls of anymodel's experts function")
    ran = {key.split(": ", 1)[1] for key in paths}
    if arch in EXPERTS_INTERFACE_ARCHS:
        assert ran == {"anymodel experts function"} and calls[0] > 0, (arch, paths, calls)
    elif arch in OWN_EXPERTS_ARCHS:
        assert ran == {"own code (no experts interface)"} and calls[0] == 0, (arch, paths, calls)
    else:
        assert not paths and calls[0] == 0, (arch, paths, calls)


def test_recurrent_archs_are_detected():
    """The loader finds recurrent state from the class flag or the config's cache layers (MiniMax
    sets no flag), and only there."""
    from anymodel import loader

    for arch in ZOO:
        path = cached_model(arch)  # read only
        config = loader.load_config(path, trust_remote_code=False)
        spec = loader.resolve_causal_lm_class(config, path, trust_remote_code=False)
        assert (spec.recurrent is not None) == (arch in RECURRENT_ARCHS), (arch, spec.recurrent)
        assert spec.backend_compatible == (arch not in COMPAT_ARCHS), arch


@pytest.mark.parametrize("arch", sorted(KNOWN_UNSUPPORTED))
def test_known_unsupported_gets_a_clear_error(arch, tmp_path):
    task, reason = KNOWN_UNSUPPORTED[arch]
    assert arch in UNSUPPORTED_ZOO and arch not in ZOO
    path = build_tiny_model(arch, tmp_path / arch, for_task=task)
    with pytest.raises(ValueError, match=reason):
        LLM(model=str(path), model_impl="transformers", dtype="float32")


def test_recurrent_model_needs_the_compat_path(tmp_path):
    """With the compat path off, a recurrent model is refused with the requirement it misses."""
    path = build_tiny_model("minimax", tmp_path / "minimax")
    with pytest.raises(ValueError, match="recurrent state"):
        LLM(model=str(path), model_impl="transformers", dtype="float32", enable_compat_path=False)


def test_own_mask_needs_the_compat_path(tmp_path):
    """Doge computes a dynamic mask and hands it to the attention function: the self-check sends it to
    the compat path (test_greedy_matches_transformers); with that path off it is refused, naming why."""
    path = build_tiny_model("doge", tmp_path / "doge")
    with pytest.raises(ValueError, match="DogeAttention passes its own attention mask / bias.*enable_compat_path=True"):
        LLM(model=str(path), model_impl="transformers", dtype="float32", enable_compat_path=False)


def test_head_dim_null_gets_its_default(tmp_path):
    """Ministral configs may store `head_dim: null`, which plain Transformers 5.24 cannot build
    (`None ** -0.5`); the loader fills hidden_size // num_attention_heads, as the modeling code means."""
    path, prompts, reference = greedy_case("ministral", tmp_path / "ministral", MAX_TOKENS)  # head_dim 16 = 64 // 4
    config_file = path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "head_dim": None}))
    llm = LLM(model=str(path), model_impl="transformers", dtype="float32", seed=0)
    assert llm_greedy(llm, prompts, MAX_TOKENS) == reference


def test_custom_model_needs_trust_remote_code(tmp_path):
    path = build_tiny_model(CUSTOM_ARCH, tmp_path / CUSTOM_ARCH)
    with pytest.raises(ValueError, match="trust_remote_code"):
        LLM(model=str(path), dtype="float32")
