"""Remote code whose `_init_weights` forgets a computed buffer still gets its true value, on every
loader (paged, compat, pooling); and a model whose logits are still non-finite is refused."""

import shutil

import pytest
import torch

from anymodel import LLM
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import argmax_greedy, llm_greedy

INIT_OVERRIDE = """        if isinstance(module, TinyPlanRotary):  # Transformers 5 materialises buffers empty: recompute
            init.copy_(module.inv_freq, module.compute_inv_freq())"""


def test_non_persistent_buffers_are_recomputed(tmp_path):
    good = build_tiny_model("tinyplan", tmp_path / "good")
    forgetful = tmp_path / "forgetful"
    shutil.copytree(good, forgetful)
    modeling = forgetful / "modeling_tinyplan.py"
    source = modeling.read_text()
    assert INIT_OVERRIDE in source
    modeling.write_text(source.replace(INIT_OVERRIDE, "        pass"))

    tokens = {}
    for name, path in (("good", good), ("forgetful", forgetful)):
        llm = LLM(str(path), trust_remote_code=True, dtype="float32")
        inv_freq, expected = llm.apply_model(
            lambda m: (m.model.rotary.inv_freq.clone(), m.model.rotary.compute_inv_freq())
        )[0]
        torch.testing.assert_close(inv_freq, expected)
        tokens[name] = llm_greedy(llm, mixed_prompts(n=3, seed=1), 6)
    assert tokens["forgetful"] == tokens["good"]


# ---- old-style remote code: constants computed in __init__, absent from the checkpoint (issue 23) ----
from tests.models.oldstyle import build_oldstyle  # noqa: E402

OLD_PROMPTS = [list(range(10, 31)), [5, 6, 7]]
PATHS = {True: "CompatCausalLM", False: "TransformersForCausalLM"}


@pytest.fixture(scope="module", params=[True, False], ids=["own-attention", "attention-interface"])
def oldstyle(request, tmp_path_factory):
    own = request.param
    path, model = build_oldstyle(tmp_path_factory.mktemp("oldstyle"), own_attention=own)
    return own, path, model


def test_oldstyle_constants_hold_what_init_computes(oldstyle):
    """rotary inv_freq / cos / sin (non-persistent), a buffer made on the default device, a
    persistent buffer the checkpoint lacks, a causal-mask buffer and a plain tensor attribute:
    on the paged path and on the compat path, tokens equal the model as built."""
    own, path, model = oldstyle
    llm = LLM(str(path), trust_remote_code=True, dtype="float32")
    assert llm.apply_model(lambda m: type(m).__name__) == [PATHS[own]]
    attn = llm.apply_model(lambda m: m.model.layers[1].self_attn)[0]
    built = model.model.layers[1].self_attn
    for name in ("head_gain", "causal", "out_scale"):
        torch.testing.assert_close(getattr(attn, name), getattr(built, name), msg=name)
    for name in ("inv_freq", "positions", "cos_cached", "sin_cached"):
        torch.testing.assert_close(getattr(attn.rotary, name), getattr(built.rotary, name), msg=name)
    assert llm_greedy(llm, OLD_PROMPTS, 6) == [argmax_greedy(model, p, 6) for p in OLD_PROMPTS]


def test_oldstyle_pooling_loader_restores_constants(oldstyle):
    own, path, model = oldstyle
    llm = LLM(str(path), trust_remote_code=True, dtype="float32", task="embed")
    got = torch.tensor([o.outputs.embedding for o in llm.embed([{"prompt_token_ids": p} for p in OLD_PROMPTS],
                                                                use_tqdm=False)])
    with torch.no_grad():
        last = [model.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1] for p in OLD_PROMPTS]
    torch.testing.assert_close(got, torch.nn.functional.normalize(torch.stack(last), dim=-1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task", ["generate", "embed"])
def test_a_constant_left_garbage_is_refused_not_served(oldstyle, monkeypatch, task):
    """Whatever restoring misses, the start-up probe must not serve NaN outputs: a cos cache left
    NaN (as `torch.empty` may be) is refused with the reason, on either path, for either task."""
    from anymodel.adapters import computed_buffers

    restore = computed_buffers.restore_computed_buffers

    def restore_but_miss_cos(model, *args, **kwargs):
        restore(model, *args, **kwargs)
        for module in model.modules():
            if "cos_cached" in module._buffers:
                module.cos_cached.fill_(float("nan"))

    monkeypatch.setattr(computed_buffers, "restore_computed_buffers", restore_but_miss_cos)
    own, path, _ = oldstyle
    with pytest.raises(ValueError, match="self-check.*non-finite"):
        LLM(str(path), trust_remote_code=True, dtype="float32", task=task)
