"""Beam search in vLLM's shape (`LLM.beam_search(prompts, BeamSearchParams(...))` ->
`list[BeamSearchOutput]`), with Transformers' algorithm, on the engine.

Each step asks the engine for one token of every live beam with its top-K log-probabilities
(K = max(2, 1 + #EOS ids) * beam_width, as Transformers takes), expands, and keeps the best; the
prefix cache makes re-running a beam's tokens cheap (this is how vLLM runs beam search too).
The search itself (`BeamSearchInstance`) knows nothing of the engine: `pending()` names the token
sequences to run, `advance()` takes their log-probabilities, so the offline API and the server
drive the same state.

Equal to Transformers `generate(num_beams=beam_width, num_return_sequences=beam_width,
do_sample=False, early_stopping="never", length_penalty=length_penalty)`:
  - candidates: the top K (beam, token) pairs by cumulative logprob over all live beams;
  - a candidate ending in EOS (or reaching max_tokens) finishes only if it ranks among the top
    beam_width candidates; its score is cum_logprob / generated_len ** length_penalty, the EOS
    token counted in generated_len; the best beam_width finished sequences are kept;
  - the live beams are the best beam_width unfinished candidates;
  - the search stops when no live beam can still beat the worst kept sequence (early_stopping="never":
    Transformers' exact bound) or at max_tokens.
Where vLLM differs (and we follow Transformers): vLLM's score divides by the prompt + generated
length less a final EOS, and it keeps EOS candidates beyond the top beam_width. `temperature` is
accepted as in vLLM and, as there, changes nothing: beams rank by the model's raw log-probabilities.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from anymodel.outputs import Logprob

TokenLogprobs = dict[int, Logprob]  # one position: token id -> Logprob


@dataclass
class BeamSearchParams:
    """vLLM's BeamSearchParams (anymodel.sampling_params / vllm.sampling_params)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0  # accepted (vLLM's field); beams rank by raw log-probabilities whatever its value
    length_penalty: float = 1.0  # score = cum_logprob / generated_len ** length_penalty (Transformers)
    include_stop_str_in_output: bool = False  # keep the EOS token's text in `text`

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, ok in (("temperature", lambda v: v >= 0), ("length_penalty", lambda v: True)):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and abs(value) < float("inf")
                    and ok(value)):
                raise ValueError(f"{name} must be a finite number{' >= 0' if name == 'temperature' else ''}, "
                                 f"got {value!r}")


@dataclass
class BeamSearchSequence:
    """One beam: `tokens` are the prompt's then the generated ones (an ending EOS included), as in vLLM."""

    tokens: list[int]
    logprobs: list[TokenLogprobs]  # per generated position: the top-K entries the step returned
    lora_request: Any = None
    cum_logprob: float = 0.0
    text: str | None = None  # filled when returned: the decoded tokens (prompt included, as vLLM offline)
    finish_reason: str | None = None  # "stop" (EOS) | "length"
    stop_reason: int | str | None = None  # the EOS token id that ended it


@dataclass
class BeamSearchOutput:
    """The best sequences of one prompt, best first (at most beam_width)."""

    sequences: list[BeamSearchSequence]


def beam_score(cum_logprob: float, generated_len: int, length_penalty: float) -> float:
    """Transformers' finished-hypothesis score (the EOS token counts in generated_len)."""
    return cum_logprob / (generated_len ** length_penalty)


@dataclass
class BeamSearchInstance:
    """The search for one prompt. Drive it: `pending()` -> run each token list one step with top-K
    logprobs -> `advance(entries)`, until `done`."""

    prompt_token_ids: list[int]
    params: BeamSearchParams
    eos_token_ids: frozenset[int]
    max_new_tokens: int  # max_tokens, capped by the room the context leaves
    beams: list[BeamSearchSequence] = field(default_factory=list)  # live, best first
    finished: list[tuple[float, BeamSearchSequence]] = field(default_factory=list)  # (score, seq), best first
    step: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.beams = [BeamSearchSequence(list(self.prompt_token_ids), [])]

    @property
    def num_candidates(self) -> int:
        """K: how many continuations a step keeps (and how many logprobs each beam needs)."""
        return max(2, 1 + len(self.eos_token_ids)) * self.params.beam_width

    def pending(self) -> list[list[int]]:
        return [] if self.done else [beam.tokens for beam in self.beams]

    def advance(self, entries: list[TokenLogprobs]) -> None:
        """entries[i]: the next-token logprobs of live beam i (at least its top K)."""
        width, last = self.params.beam_width, self.step + 1 >= self.max_new_tokens
        candidates = [(beam.cum_logprob + lp.logprob, i, token, entry)
                      for i, (beam, entry) in enumerate(zip(self.beams, entries)) for token, lp in entry.items()]
        candidates.sort(key=lambda c: -c[0])
        live = []
        for rank, (cum, i, token, entry) in enumerate(candidates[:self.num_candidates]):
            beam = self.beams[i]
            seq = BeamSearchSequence(beam.tokens + [token], beam.logprobs + [entry], beam.lora_request, cum)
            stops = token in self.eos_token_ids and not self.params.ignore_eos
            if stops or last:
                if rank < width:  # Transformers finalizes only among the top beam_width candidates
                    seq.finish_reason, seq.stop_reason = ("stop", token) if stops else ("length", None)
                    self.finished.append((beam_score(cum, self.step + 1, self.params.length_penalty), seq))
            elif len(live) < width:
                live.append(seq)
        self.finished = sorted(self.finished, key=lambda f: -f[0])[:width]
        self.beams, self.step = live, self.step + 1
        self.done = last or not live or not self._can_improve()

    def _can_improve(self) -> bool:
        """Transformers' early_stopping="never" bound: the best live beam's best possible score (at
        the longest length when length_penalty > 0: cum_logprob only falls) against the worst kept."""
        if len(self.finished) < self.params.beam_width:
            return True
        lp = self.params.length_penalty
        length = self.max_new_tokens if lp > 0 else self.step
        return self.beams[0].cum_logprob / (length ** lp) > self.finished[-1][0]

    def result(self, decode: Callable[[list[int]], str]) -> BeamSearchOutput:
        sequences = [seq for _, seq in self.finished]
        for seq in sequences:
            seq.text = decode(self.text_tokens(seq, with_prompt=True))
        return BeamSearchOutput(sequences)

    def text_tokens(self, seq: BeamSearchSequence, with_prompt: bool) -> list[int]:
        """The tokens a sequence's text spells: its ending EOS only with include_stop_str_in_output."""
        tokens = seq.tokens if with_prompt else seq.tokens[len(self.prompt_token_ids):]
        drop_eos = seq.finish_reason == "stop" and not self.params.include_stop_str_in_output
        return tokens[:-1] if drop_eos else tokens


def step_params(instances: list[BeamSearchInstance]):
    """The SamplingParams of one beam step: one token, the top K logprobs (greedy: the sampled token is
    the best, and logprobs are the raw ones, whatever the sampling)."""
    from anymodel.params import SamplingParams

    k = max(inst.num_candidates for inst in instances)
    return SamplingParams(temperature=0.0, max_tokens=1, logprobs=k, ignore_eos=True, detokenize=False)


def make_instances(prompt_token_ids: list[list[int]], params: BeamSearchParams, eos_token_ids: frozenset[int],
                   max_model_len: int, max_logprobs: int) -> list[BeamSearchInstance]:
    """One search per prompt; a prompt that leaves no room for a token, or a beam_width needing more
    logprobs than the engine's max_logprobs, is a ValueError naming it."""
    instances = []
    for i, ids in enumerate(prompt_token_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if len(ids) >= max_model_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens but the model's context length (max_model_len) "
                             f"is {max_model_len}")
        instances.append(BeamSearchInstance(list(ids), params, eos_token_ids,
                                            min(params.max_tokens, max_model_len - len(ids))))
    k = instances[0].num_candidates if instances else 0
    if max_logprobs != -1 and k > max_logprobs:
        raise ValueError(f"beam_width={params.beam_width} needs the top {k} logprobs per step, more than this "
                         f"engine's max_logprobs ({max_logprobs}); lower beam_width or start the engine with "
                         "max_logprobs=-1")
    return instances


def run_offline(llm, prompts: list, params: BeamSearchParams, use_tqdm: bool = False) -> list[BeamSearchOutput]:
    """LLM.beam_search: every prompt's search advanced together, one batched `generate` per step."""
    from tqdm.auto import tqdm

    if not isinstance(params, BeamSearchParams):
        raise ValueError(f"params must be a BeamSearchParams, got {type(params).__name__}")
    engine = llm.engine
    if engine.tokenizer is None:  # as vLLM: the sequences' text needs it
        raise ValueError("beam search needs the tokenizer, and this LLM has none (skip_tokenizer_init=True)")
    tokens = [engine.inputs.tokenize(p) for p in prompts]
    if any(t.embeds is not None for t in tokens):  # their ids are placeholders: beams would extend those
        raise ValueError("beam_search does not take prompt_embeds prompts")
    instances = make_instances([t.token_ids for t in tokens], params, engine.eos_token_ids, engine.max_model_len, engine.args.max_logprobs)
    sampling = step_params(instances) if instances else None
    bar = tqdm(total=params.max_tokens, desc="Beam search", disable=not use_tqdm)
    while any(not inst.done for inst in instances):
        batch = [(inst, seq) for inst in instances for seq in inst.pending()]
        outputs = llm.generate([{"prompt_token_ids": seq} for _, seq in batch], sampling, use_tqdm=False)
        at = 0
        for inst in [inst for inst in instances if not inst.done]:
            n = len(inst.beams)
            inst.advance([out.outputs[0].logprobs[0] for out in outputs[at:at + n]])
            at += n
        bar.update(1)
    bar.close()
    return [inst.result(engine.tokenizer.decode) for inst in instances]
