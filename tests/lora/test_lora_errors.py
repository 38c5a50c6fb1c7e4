"""Bad adapters and bad LoRA arguments: a ValueError naming the adapter and the problem, raised by
`generate` before anything runs; the engine serves the next request as before."""

import json

import pytest
from safetensors.torch import load_file, save_file

from anymodel import LLM, LoRARequest, SamplingParams
from tests.lora.peft_adapters import make_adapter
from tests.models.zoo import build_tiny_model

SP = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-errors")
    base = build_tiny_model("llama", root / "base")
    good = make_adapter(base, root / "good", ["q_proj", "v_proj"], r=4)
    llm = LLM(str(base), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8)
    return root, base, good, llm


def _fails(llm, request: LoRARequest, *needles: str) -> None:
    with pytest.raises(ValueError) as e:
        llm.generate("hello", SP, use_tqdm=False, lora_request=request)
    for needle in (request.lora_name, *needles):
        assert needle in str(e.value)


def _edited(good, out, edit) -> str:
    """A copy of the good adapter with its tensors passed through `edit`."""
    out.mkdir()
    (out / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    save_file(edit(load_file(str(good / "adapter_model.safetensors"))), str(out / "adapter_model.safetensors"))
    return str(out)


def test_rank_above_max_lora_rank(setup):
    root, base, _, llm = setup
    big = make_adapter(base, root / "big", ["q_proj"], r=16)
    _fails(llm, LoRARequest("big", 11, str(big)), "rank 16 > max_lora_rank=8")


def test_target_module_the_model_lacks(setup):
    root, _, good, llm = setup
    path = _edited(good, root / "lacks", lambda t: {k.replace("q_proj", "qq_proj"): v for k, v in t.items()})
    _fails(llm, LoRARequest("lacks", 12, path), "qq_proj", "not in the model")


def test_adapter_for_another_base(setup):
    root, _, good, llm = setup

    def widen(tensors):  # lora_A of a model with a wider hidden size
        import torch
        return {k: torch.cat([v, v], dim=1) if "lora_A" in k else v for k, v in tensors.items()}

    _fails(llm, LoRARequest("other", 13, _edited(good, root / "other", widen)), "another base model", "in_features")


def test_missing_path_and_files(setup):
    root, _, _, llm = setup
    _fails(llm, LoRARequest("nowhere", 14, str(root / "does-not-exist")), "does not exist")
    (root / "empty").mkdir()
    _fails(llm, LoRARequest("empty", 15, str(root / "empty")), "adapter_config.json")


def test_unsupported_adapter_config(setup):
    root, _, good, llm = setup
    out = root / "dora"
    path = _edited(good, out, lambda t: t)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    _fails(llm, LoRARequest("dora", 16, path), "use_dora")


def test_one_id_one_adapter_and_list_lengths(setup):
    root, _, good, llm = setup
    llm.generate("hi", SP, use_tqdm=False, lora_request=LoRARequest("good", 1, str(good)))
    _fails(llm, LoRARequest("impostor", 1, str(root / "x")), "lora_int_id 1 is already adapter 'good'")
    with pytest.raises(ValueError, match="lora_request has 1 entries for 2 prompts"):
        llm.generate(["a", "b"], SP, use_tqdm=False, lora_request=[None])
    with pytest.raises(ValueError, match="lora_int_id must be an integer >= 1"):
        LoRARequest("zero", 0, str(good))
    # after all these, the engine serves as before
    out = llm.generate(["a", "b"], SP, use_tqdm=False, lora_request=[None, LoRARequest("good", 1, str(good))])
    assert all(len(o.outputs[0].token_ids) == 3 for o in out)


def test_lora_not_enabled(setup):
    _, base, good, _ = setup
    llm = LLM(str(base), dtype="float32")
    _fails(llm, LoRARequest("good", 1, str(good)), "enable_lora=True")
    with pytest.raises(ValueError, match="enable_lora=True"):
        llm.chat([{"role": "user", "content": "hi"}], SP, use_tqdm=False, lora_request=LoRARequest("g", 1, str(good)))


def test_engine_arguments():
    with pytest.raises(ValueError, match="max_loras must be an integer >= 1"):
        LLM("unused", enable_lora=True, max_loras=0)
    with pytest.raises(ValueError, match=r"max_cpu_loras \(1\) must be >= max_loras \(2\)"):
        LLM("unused", enable_lora=True, max_loras=2, max_cpu_loras=1)


def test_describe_names_the_lora_setup(setup):
    *_, llm = setup
    assert "LoRA          every decoder linear wrapped (anymodel.lora): max_loras=2 device slots, max_lora_rank=8" \
        in llm.describe()


def test_chat_runs_the_adapter(setup):
    *_, good, llm = setup
    lora = LoRARequest("good", 1, str(good))
    messages = [{"role": "user", "content": "hello there"}]
    tok = llm.get_tokenizer()
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    chat = llm.chat(messages, SP, use_tqdm=False, lora_request=lora)[0].outputs[0].token_ids
    assert chat == llm.generate({"prompt_token_ids": ids}, SP, use_tqdm=False, lora_request=lora)[0].outputs[0].token_ids
    # the adapter changes this answer (so the equality above could not hold without it)
    assert chat != llm.generate({"prompt_token_ids": ids}, SP, use_tqdm=False)[0].outputs[0].token_ids
