"""LoRA adapters in one generate call, mixed with the base model: greedy tokens equal those of the
PEFT adapter merged into the base (float32), for the native Llama, the Transformers backend of the
same checkpoint and a custom `auto_map` model; also under KV-cache pressure (preemption)."""

import pytest

from anymodel import LLM, LoRARequest
from tests.lora.peft_adapters import make_adapter, merged_greedy
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.reference import llm_greedy

LLAMA_TARGETS = [
    ["q_proj", "v_proj"],
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ["k_proj", "up_proj", "down_proj"],
]
N_TOKENS = 6


def _case(arch: str, tmp_path, targets: list[list[str]], ranks=(4, 8, 2)):
    base = build_tiny_model(arch, tmp_path / "base")
    adapters = [make_adapter(base, tmp_path / f"lora{i}", t, r=r, alpha=2 * r, seed=i)
                for i, (t, r) in enumerate(zip(targets, ranks))]
    prompts = mixed_prompts(base, n=8, seed=4)
    # prompt k runs adapter k % 4 - 1 (-1: the base model): every adapter and the base in one call
    choice = [k % (len(adapters) + 1) - 1 for k in range(len(prompts))]
    requests = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(adapters)]
    loras = [None if c < 0 else requests[c] for c in choice]
    expected = [None] * len(prompts)
    for c in set(choice):
        idx = [k for k in range(len(prompts)) if choice[k] == c]
        refs = merged_greedy(base, None if c < 0 else adapters[c], [prompts[k] for k in idx], N_TOKENS)
        for k, ref in zip(idx, refs):
            expected[k] = ref
    return base, prompts, loras, expected


def _check(llm, prompts, loras, expected, base_only):
    got = llm_greedy_lora(llm, prompts, loras)
    assert got == expected
    # the adapters change the tokens (a LoRA that did nothing would pass the line above on its own)
    assert sum(g != b for g, b, lr in zip(got, base_only, loras) if lr is not None) >= 3


def llm_greedy_lora(llm, prompts, loras):
    from anymodel import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=N_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False, lora_request=loras)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_llama_mixed_adapters_equal_merged_peft(tmp_path, impl):
    base, prompts, loras, expected = _case("llama", tmp_path, LLAMA_TARGETS)
    llm = LLM(str(base), dtype="float32", model_impl=impl, enable_lora=True, max_loras=2, max_lora_rank=8)
    base_only = merged_greedy(base, None, prompts, N_TOKENS)
    _check(llm, prompts, loras, expected, base_only)
    # again, now with every adapter in host memory and slots reused (LRU): same tokens
    assert llm_greedy_lora(llm, prompts, loras) == expected
    assert llm_greedy(llm, prompts, N_TOKENS) == base_only  # no lora_request: the base model


def test_custom_auto_map_model(tmp_path):
    targets = [["wq", "wv"], ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"], ["w_down"]]
    base, prompts, loras, expected = _case("tinycustom", tmp_path, targets)
    llm = LLM(str(base), dtype="float32", trust_remote_code=True, enable_lora=True, max_loras=3, max_lora_rank=8)
    _check(llm, prompts, loras, expected, merged_greedy(base, None, prompts, N_TOKENS))


def test_under_kv_pressure(tmp_path):
    """Few KV blocks: requests are preempted and recomputed, with their adapters."""
    base, prompts, loras, expected = _case("llama", tmp_path, LLAMA_TARGETS)
    llm = LLM(str(base), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8, num_kv_blocks=12,
              block_size=8, max_num_batched_tokens=10)
    assert llm_greedy_lora(llm, prompts, loras) == expected
    assert llm.engine.stats().num_preemptions_total > 0


def test_prefix_cache_keeps_adapters_apart(tmp_path):
    """One prompt under the base and two adapters, twice: the second round hits the prefix cache,
    each adapter only its own blocks, and every answer stays its adapter's."""
    base = build_tiny_model("llama", tmp_path / "base")
    dirs = [make_adapter(base, tmp_path / f"lora{i}", LLAMA_TARGETS[i], r=4, seed=i) for i in range(2)]
    prompt = mixed_prompts(base, n=8, seed=4)[-1]  # 65 tokens: 4 full blocks
    loras = [None] + [LoRARequest(f"a{i}", i + 1, str(d)) for i, d in enumerate(dirs)]
    expected = [merged_greedy(base, d, [prompt], N_TOKENS)[0] for d in [None, *dirs]]
    assert len({tuple(e) for e in expected}) == 3
    llm = LLM(str(base), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8)
    for _ in range(2):
        assert llm_greedy_lora(llm, [prompt] * 3, loras) == expected
    assert llm.engine.stats().prefix_cache_hit_tokens_total >= 3 * 64
