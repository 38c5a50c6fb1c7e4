"""LoRA adapters over a quantized base (quantization runs before the LoRA transform): greedy tokens
equal the PEFT adapter merged into the plain float32 twin whose weights are the dequantized values."""

import pytest

from anymodel import LLM, LoRARequest, SamplingParams
from tests.lora.peft_adapters import make_adapter, merged_greedy
from tests.models.zoo import mixed_prompts
from tests.quantization.checkpoints import compressed_tensors, quantized_pair

W4A16 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 16, "symmetric": True}


@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_lora_over_w4a16(tmp_path, impl):
    quant, plain = quantized_pair("llama", tmp_path, compressed_tensors("pack-quantized", W4A16))
    adapter = make_adapter(plain, tmp_path / "lora", ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    prompts = mixed_prompts(plain, n=3, seed=6)
    expected = merged_greedy(plain, adapter, prompts, 5)
    llm = LLM(str(quant), dtype="float32", model_impl=impl, enable_lora=True, max_loras=1, max_lora_rank=8,
              num_kv_blocks=32)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False,
                        lora_request=LoRARequest("a", 1, str(adapter)))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert expected != merged_greedy(plain, None, prompts, 5)  # the adapter changes the tokens
