"""The greedy references our tokens are checked against, in one place (DESIGN.md, Tests: greedy
tokens equal plain Transformers' greedy tokens on the same checkpoint, float32).

    reference = hf_greedy(path, prompts, 8)              # plain Transformers generate(), one prompt at a time
    path, prompts, reference = greedy_case("qwen2", tmp_path, 8, n=8, seed=1)   # zoo build + prompts + hf_greedy
    assert llm_greedy(llm, prompts, 8) == reference      # ours: prompt_token_ids in, ignore_eos
    tokens, logits = hf_greedy_logits(path, prompts, 8)  # + every step's logits [V] (logprob checks)
    argmax_greedy(model, ids, 6)   # an in-memory model (remote code as built): full recompute per token
    dense_logits(model, ids)       # our model class, one request, no KV cache (the attention discovery pass)

Tiny checkpoints come from tests/models: zoo.py builds every one that is saved from a config
(`build_tiny_model(arch)` for the zoo archs, TinyCustom and TinyPlan; `save_random_model` for a
one-off config), oldstyle.py and tinyold.py build remote code whose constants only its own
`__init__` computes (their in-memory model is the reference for `argmax_greedy`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig

from anymodel import SamplingParams
from tests.models.tokenizer import PAD_ID
from tests.models.zoo import _one_thread, build_tiny_model, mixed_prompts


def hf_greedy(
    model_dir: str | Path, prompt_token_ids: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Plain-Transformers greedy reference: float32, one prompt at a time (no padding), default
    attention implementation (sdpa), HF's own cache. Returns only the new tokens.

    EOS semantics = vLLM's `ignore_eos=True`: exactly `max_new_tokens` tokens are generated and EOS
    may appear among them (no eos_token_id at all: EOS neither stops nor is masked). Note that
    `min_new_tokens` would *mask* EOS instead, which is vLLM's `min_tokens`, not `ignore_eos`; and
    `eos_token_id=None` passed to generate() is overridden by the model's generation_config."""
    return hf_greedy_logits(model_dir, prompt_token_ids, max_new_tokens)[0]


def greedy_case(
    arch: str, out_dir: str | Path, max_new_tokens: int, *, n: int = 8, seed: int = 0
) -> tuple[Path, list[list[int]], list[list[int]]]:
    """A zoo checkpoint in `out_dir`, `n` mixed-length prompts of its vocabulary (`mixed_prompts`),
    and their `hf_greedy` tokens."""
    path = build_tiny_model(arch, out_dir)
    prompts = mixed_prompts(path, n=n, seed=seed)
    return path, prompts, hf_greedy(path, prompts, max_new_tokens)


def hf_greedy_logits(
    model_dir: str | Path, prompt_token_ids: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """`hf_greedy` plus, per prompt, the float32 logits [V] of every generated step."""
    model = _load_reference(model_dir)
    tokens, logits = [], []
    with _one_thread():
        for ids in prompt_token_ids:
            new, steps = _generate(model, ids, max_new_tokens)
            tokens.append(new)
            logits.append(steps)
    return tokens, logits


def hf_greedy_with_gaps(
    model_dir: str | Path, prompt_token_ids: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], list[float]]:
    """`hf_greedy` plus the top1 - top2 logit gap of every step (how safe argmax is from noise)."""
    tokens, logits = hf_greedy_logits(model_dir, prompt_token_ids, max_new_tokens)
    gaps = [float(top[0] - top[1]) for steps in logits for top in (step.topk(2).values for step in steps)]
    return tokens, gaps


def _load_reference(model_dir: str | Path):
    from transformers import AutoModelForCausalLM

    # trust_remote_code: the zoo's own local checkpoints only (the custom model ships its code)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, trust_remote_code=True
    ).eval()
    model.generation_config = GenerationConfig(do_sample=False, pad_token_id=PAD_ID)  # no EOS
    return model


@torch.inference_mode()
def _generate(model, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy `generate` for one prompt -> (new token ids, per-step logits [V])."""
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
        output_logits=True, return_dict_in_generate=True,
    )
    new = out.sequences[0, len(ids):].tolist()
    assert len(new) == max_new_tokens, f"generate stopped early: {len(new)} < {max_new_tokens}"
    return new, [step[0].float() for step in out.logits]


@torch.inference_mode()
def argmax_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens of an in-memory HF-style model, the whole sequence recomputed each step (no
    cache): the reference for remote code whose constants only its own `__init__` computes."""
    seq = list(ids)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        seq.append(int(logits.argmax()))
    return seq[len(ids):]


def greedy_outputs(llm, prompt_token_ids: list[list[int]], max_tokens: int, **params) -> list:
    """Our side: `llm.generate` on token-id prompts, greedy with ignore_eos (as `hf_greedy`);
    `params` add to or override the SamplingParams (logprobs=0, ignore_eos=False, ...)."""
    sampling = SamplingParams(**{"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True, **params})
    return llm.generate([{"prompt_token_ids": p} for p in prompt_token_ids], sampling, use_tqdm=False)


def llm_greedy(llm, prompt_token_ids: list[list[int]], max_tokens: int, **params) -> list[list[int]]:
    """The token ids of `greedy_outputs`, one list per prompt, in prompt order."""
    return [list(o.outputs[0].token_ids) for o in greedy_outputs(llm, prompt_token_ids, max_tokens, **params)]


@torch.inference_mode()
def dense_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] of one request through our model class (adapter or native) with no KV cache:
    inside `ForwardContext.discovery` the attention function attends densely, as plain Transformers."""
    from anymodel.attention_backend.forward_context import ForwardContext
    from anymodel.attention_backend.metadata import AttentionMetadata

    T = len(ids)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, T], dtype=torch.int32), seq_lens=torch.tensor([T], dtype=torch.int32),
        block_tables=torch.zeros(1, 1, dtype=torch.int32), slot_mapping=torch.arange(T), max_query_len=T,
        max_seq_len=T, block_size=16,
    )
    with ForwardContext.discovery(meta):
        hidden = model(torch.tensor([ids]), torch.arange(T)[None], meta)
    return model.compute_logits(hidden)
