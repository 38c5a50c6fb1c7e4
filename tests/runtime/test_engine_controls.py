"""vLLM's offline odds and ends: SamplingParams.from_optional / clone, LLM.get_tokenizer /
set_tokenizer, reset_prefix_cache, and sleep / wake_up (the KV cache freed and restored on every
worker; the weights offloaded on a GPU)."""

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.params import SamplingParams as SP

GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def test_from_optional_fills_defaults_and_clips_logit_bias():
    p = SP.from_optional(n=None, temperature=None, top_p=None, presence_penalty=None, frequency_penalty=None,
                         repetition_penalty=None, max_tokens=7, logit_bias={"5": 250.0, 6: -300})
    d = SP()
    assert (p.n, p.temperature, p.top_p, p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (
        d.n, d.temperature, d.top_p, d.presence_penalty, d.frequency_penalty, d.repetition_penalty)
    assert p.max_tokens == 7 and p.logit_bias == {5: 100.0, 6: -100.0}
    with pytest.raises(ValueError, match="cannot be converted to integer token IDs: 'x'"):
        SP.from_optional(logit_bias={"x": 1.0})
    with pytest.raises(ValueError, match="logit_bias"):  # NaN is not clipped into range: it is refused
        SP.from_optional(logit_bias={1: float("nan")})
    with pytest.raises(TypeError):
        SP.from_optional(not_an_option=1)


def test_clone_is_independent():
    p = SP(stop=["a"], stop_token_ids=[3], logit_bias={1: 2.0})
    c = p.clone()
    c.stop.append("b")
    c.stop_token_ids.append(4)
    c.logit_bias[2] = 1.0
    assert (p.stop, p.stop_token_ids, p.logit_bias) == (["a"], [3], {1: 2.0})
    assert p.clone(temperature=0.5).temperature == 0.5 and p.temperature == 1.0


class _Upper:
    """A tokenizer that upper-cases text before the real one tokenizes it."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text, **kw):
        return self._tok.encode(text.upper(), **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_set_tokenizer(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32")
    tok = llm.get_tokenizer()
    assert llm.generate("hello", GREEDY, use_tqdm=False)[0].prompt_token_ids == tok.encode("hello")
    llm.set_tokenizer(_Upper(tok))
    assert isinstance(llm.get_tokenizer(), _Upper)
    out = llm.generate("hello", GREEDY, use_tqdm=False)[0]
    assert out.prompt_token_ids == tok.encode("HELLO") != tok.encode("hello")
    assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_reset_prefix_cache(tiny_llm):
    prompt = {"prompt_token_ids": list(range(5, 45))}  # 40 tokens: 2 full blocks of 16
    tiny_llm.generate(prompt, GREEDY, use_tqdm=False)
    assert tiny_llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 32
    assert tiny_llm.reset_prefix_cache() is True
    assert tiny_llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 0


def _kv(llm):
    return llm.collective_rpc(lambda w: [tuple(k.shape) for k, _ in w.runner.kv_caches])[0]


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_frees_the_kv_cache_and_wake_up_restores_it(tiny_model_dir, level):
    llm = LLM(str(tiny_model_dir), dtype="float32", num_kv_blocks=32)
    prompts = ["the cat sat", "one two three four"]
    before, shapes = llm.generate(prompts, GREEDY, use_tqdm=False), _kv(llm)
    assert shapes and not llm.is_sleeping()
    llm.sleep(level=level)
    assert llm.is_sleeping() and _kv(llm) == []
    with pytest.raises(ValueError, match="asleep.*wake_up"):
        llm.generate(prompts, GREEDY, use_tqdm=False)
    llm.wake_up(tags=["weights"])
    assert llm.is_sleeping() and _kv(llm) == []  # the KV cache still sleeps
    llm.wake_up(tags=["kv_cache"])
    assert not llm.is_sleeping() and _kv(llm) == shapes
    assert llm.collective_rpc(lambda w: float(sum(k.abs().sum() for k, _ in w.runner.kv_caches)))[0] == 0.0
    after = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in after] == [o.outputs[0].token_ids for o in before]
    assert all(o.num_cached_tokens == 0 for o in after)  # the prefix cache was reset with the KV cache


def test_sleep_arguments_and_busy_engine(tiny_llm):
    with pytest.raises(ValueError, match="sleep level must be 1 or 2, got 3"):
        tiny_llm.sleep(level=3)
    with pytest.raises(ValueError, match=r"wake_up tags must be among \['weights', 'kv_cache'\], got \['gpu'\]"):
        tiny_llm.wake_up(tags=["gpu"])
    tiny_llm.engine.add_request("busy", "hello", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="needs an idle engine"):
        tiny_llm.sleep()
    tiny_llm.engine.abort("busy")
    while tiny_llm.engine.has_unfinished():
        tiny_llm.engine.step()
    tiny_llm.wake_up()  # awake already: nothing to do
    assert not tiny_llm.is_sleeping()


@pytest.mark.gpu
def test_sleep_offloads_weights_on_gpu(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cuda", num_kv_blocks=32)
    before = llm.generate(["the cat sat"], GREEDY, use_tqdm=False)
    llm.sleep(level=1)
    assert llm.collective_rpc(lambda w: {p.device.type for p in w.runner.model.parameters()})[0] == {"cpu"}
    llm.wake_up()
    assert llm.collective_rpc(lambda w: {p.device.type for p in w.runner.model.parameters()})[0] == {"cuda"}
    assert llm.generate(["the cat sat"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == before[0].outputs[0].token_ids
    torch.cuda.synchronize()
