"""LLM.beam_search (vLLM's API) equals Transformers' beam search on a tiny model.

Mapping: BeamSearchParams(beam_width=k, max_tokens=m, length_penalty=lp) ==
generate(num_beams=k, num_return_sequences=k, do_sample=False, early_stopping="never",
length_penalty=lp, max_new_tokens=m, eos_token_id=<the engine's EOS ids>): the same sequences, in
the same order, with the same scores (cum_logprob / generated_len ** lp). early_stopping=True /
False are Transformers heuristics that may stop before the best sequences are found; vLLM has no
such switch, so "never" (exact) is the one we implement.

A frequently predicted token is made an extra EOS id (generation_config.json) so that beams do
finish early and the finished-hypothesis rules (only the top beam_width candidates finish, the EOS
counts in the length) are exercised, not only max_tokens.
"""

import functools
import json
import math

import pytest
import torch

from anymodel import LLM, BeamSearchOutput, BeamSearchParams, BeamSearchSequence, SamplingParams
from anymodel.beam_search import BeamSearchInstance
from tests.models.tokenizer import EOS_ID
from tests.models.zoo import build_tiny_model, mixed_prompts

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def beam_case(tmp_path_factory):
    """A tiny llama whose generation_config names a second, often predicted EOS id."""
    path = build_tiny_model("llama", tmp_path_factory.mktemp("beam"))
    prompts = mixed_prompts(path, n=6, seed=5)
    llm = LLM(str(path), dtype="float32", generation_config="vllm")
    greedy = llm.generate([{"prompt_token_ids": p} for p in prompts],
                          SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    # tokens greedy decoding predicts a few steps in: beams meet them mid-search, in and out of the top
    extra = {greedy[0].outputs[0].token_ids[2], greedy[3].outputs[0].token_ids[3]}
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    gen["eos_token_id"] = eos_ids = sorted({EOS_ID, *extra})
    gen_file.write_text(json.dumps(gen))
    return path, prompts[:3], LLM(str(path), dtype="float32", generation_config="vllm"), eos_ids


@pytest.fixture
def eos_ranks(monkeypatch):
    """Spy: the ranks among a step's top-K candidates at which an EOS candidate came up."""
    ranks = []
    advance = BeamSearchInstance.advance

    def spy(self, entries):
        cands = sorted((b.cum_logprob + lp.logprob, t) for b, e in zip(self.beams, entries) for t, lp in e.items())
        top = [t for _, t in reversed(cands)][:self.num_candidates]
        ranks.extend(r for r, t in enumerate(top) if t in self.eos_token_ids and not self.params.ignore_eos)
        return advance(self, entries)

    monkeypatch.setattr(BeamSearchInstance, "advance", spy)
    return ranks


@functools.lru_cache(maxsize=1)
def _hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def hf_beams(path, prompt, k, lp, eos_ids, max_new=MAX_TOKENS):
    """Transformers' beams for one prompt: [(generated tokens, score)], best first."""
    model = _hf_model(str(path))
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             num_beams=k, num_return_sequences=k, do_sample=False, early_stopping="never",
                             length_penalty=lp, max_new_tokens=max_new, eos_token_id=eos_ids, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=True, output_logits=True)
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()  # generated tokens per returned beam
    return [(out.sequences[i, len(prompt):len(prompt) + n].tolist(), float(out.sequences_scores[i]))
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("k, lp", [(2, 1.0), (3, 0.0), (4, 2.0), (3, -0.5)])
def test_beam_search_equals_transformers(beam_case, eos_ranks, k, lp):
    path, prompts, llm, eos_ids = beam_case
    outs = llm.beam_search([{"prompt_token_ids": p} for p in prompts],
                           BeamSearchParams(beam_width=k, max_tokens=MAX_TOKENS, length_penalty=lp))
    finished_early = 0
    for prompt, out in zip(prompts, outs):
        ref = hf_beams(path, prompt, k, lp, eos_ids)
        ours = [(seq.tokens[len(prompt):], seq) for seq in out.sequences]
        assert [tokens for tokens, _ in ours] == [tokens for tokens, _ in ref]
        for (tokens, seq), (_, score) in zip(ours, ref):
            assert seq.tokens[:len(prompt)] == prompt
            assert math.isclose(seq.cum_logprob / len(tokens) ** lp, score, rel_tol=1e-4, abs_tol=1e-5)
            assert len(seq.logprobs) == len(tokens)
            assert seq.finish_reason == ("stop" if tokens[-1] in eos_ids else "length")
            finished_early += seq.finish_reason == "stop" and len(tokens) < MAX_TOKENS
    if k == 4:
        assert finished_early > 0  # beams did end on EOS before max_tokens
    # EOS candidates both inside the top beam_width (they finish) and below it (Transformers drops them)
    assert min(eos_ranks) < k <= max(eos_ranks)


def test_beam_search_api_shapes_text_and_errors(beam_case):
    path, prompts, llm, eos_ids = beam_case
    tok = llm.get_tokenizer()
    outs = llm.beam_search(["Hello world", {"prompt": "The cat"}], BeamSearchParams(beam_width=2, max_tokens=4))
    assert len(outs) == 2 and all(isinstance(o, BeamSearchOutput) for o in outs)
    seq = outs[0].sequences[0]
    assert isinstance(seq, BeamSearchSequence) and seq.tokens[:len(tok.encode("Hello world"))] == tok.encode("Hello world")
    body = seq.tokens[:-1] if seq.finish_reason == "stop" else seq.tokens
    assert seq.text == tok.decode(body)  # vLLM offline: the prompt's text, then the beam's
    scores = [s.cum_logprob / len(s.logprobs) for s in outs[0].sequences]  # length_penalty=1.0
    assert scores == sorted(scores, reverse=True) and len(scores) == 2
    # ignore_eos: every beam runs to max_tokens
    outs = llm.beam_search([{"prompt_token_ids": prompts[0]}],
                           BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True))
    assert all(len(s.tokens) == len(prompts[0]) + 5 and s.finish_reason == "length" for s in outs[0].sequences)
    # concurrency_limit: the same results, fewer prompts at a time
    ps = [{"prompt_token_ids": p} for p in prompts]
    params = BeamSearchParams(beam_width=2, max_tokens=3)
    assert ([[s.tokens for s in o.sequences] for o in llm.beam_search(ps, params, concurrency_limit=1)]
            == [[s.tokens for s in o.sequences] for o in llm.beam_search(ps, params)])
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=3)
    with pytest.raises(ValueError, match="max_logprobs"):
        llm.beam_search(["x"], BeamSearchParams(beam_width=11, max_tokens=2))
    with pytest.raises(ValueError, match="BeamSearchParams"):
        llm.beam_search(["x"], SamplingParams())


def test_beam_search_is_importable_where_vllm_has_it():
    import anymodel.beam_search as bs

    assert bs.BeamSearchOutput is BeamSearchOutput and bs.BeamSearchSequence is BeamSearchSequence
