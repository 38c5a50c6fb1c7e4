"""Remote code whose `_init_weights` forgets a computed buffer still gets its true value."""

import shutil

import torch

from anymodel import LLM, SamplingParams
from tests.parallel.tiny_models import build, prompts

INIT_OVERRIDE = """        if isinstance(module, TinyPlanRotary):  # Transformers 5 materialises buffers empty: recompute
            init.copy_(module.inv_freq, module.compute_inv_freq())"""


def test_non_persistent_buffers_are_recomputed(tmp_path):
    good = build("custom", tmp_path / "good")
    forgetful = tmp_path / "forgetful"
    shutil.copytree(good, forgetful)
    modeling = forgetful / "modeling_tinyplan.py"
    source = modeling.read_text()
    assert INIT_OVERRIDE in source
    modeling.write_text(source.replace(INIT_OVERRIDE, "        pass"))

    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    tokens = {}
    for name, path in (("good", good), ("forgetful", forgetful)):
        llm = LLM(str(path), trust_remote_code=True, dtype="float32")
        inv_freq, expected = llm.apply_model(
            lambda m: (m.model.rotary.inv_freq.clone(), m.model.rotary.compute_inv_freq())
        )[0]
        torch.testing.assert_close(inv_freq, expected)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts(3)], params, use_tqdm=False)
        tokens[name] = [o.outputs[0].token_ids for o in outs]
    assert tokens["forgetful"] == tokens["good"]
