"""LoRA at tensor_parallel_size=2 (native Llama, multiprocess executor): column-parallel layers cut
B like their weight (q/k/v on head bounds), row-parallel
layers cut A and sum the shrink over ranks; tokens equal the merged PEFT adapters."""

import pytest

from anymodel import LLM
from tests.lora.test_lora_generate import LLAMA_TARGETS, _case, llm_greedy_lora


@pytest.mark.parametrize("arch", ["llama"])
def test_tp2_mixed_adapters_equal_merged_peft(tmp_path, arch):
    base, prompts, loras, expected = _case(arch, tmp_path, LLAMA_TARGETS)
    llm = LLM(str(base), dtype="float32", model_impl="native", tensor_parallel_size=2, num_kv_blocks=96,
              enable_lora=True, max_loras=3, max_lora_rank=8)
    try:
        assert llm_greedy_lora(llm, prompts, loras) == expected
    finally:
        llm.engine.shutdown()
