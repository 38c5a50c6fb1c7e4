"""The offline API, in vLLM's shape: LLM(...).generate / chat / apply_model (+ the pooling methods:
embed / classify / score / reward / encode, in llm_pooling.py)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from anymodel.config import EngineArgs
from anymodel.llm_pooling import PoolingMixin
from anymodel.outputs import RequestOutput
from anymodel.params import SamplingParams


class LLM(PoolingMixin):
    """An engine in this process. `LLM()` with no model runs the embedded demo model."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        from anymodel.engine import Engine

        self.engine_args = EngineArgs.from_kwargs(model, kwargs)
        self.engine = Engine(self.engine_args)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for one prompt or a list; results come back in input order."""
        prompts = _as_list(prompts)
        params = _broadcast(sampling_params or SamplingParams(), len(prompts))
        return self._run(prompts, params, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tok = self.engine.tokenizer
        prompts = [
            tok.apply_chat_template(
                conv,
                chat_template=chat_template or self.engine_args.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **template_kwargs,
            )
            for conv in conversations
        ]
        # The template already holds any BOS it wants: tokenize without adding special tokens again.
        inputs = [{"prompt": p, "prompt_token_ids": tok.encode(p, add_special_tokens=False)} for p in prompts]
        return self.generate(inputs, sampling_params, use_tqdm)

    def apply_model(self, fn: Callable) -> list:
        """fn(model) on every worker; the model is the adapter or native class."""
        return self.engine.apply_model(fn)

    def _run(self, prompts: list, params: list, use_tqdm: bool) -> list:
        engine = self.engine
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                rid = engine.new_request_id()
                engine.add_request(rid, prompt, p)
                ids.append(rid)
        except Exception:
            engine.abort(ids)
            raise
        return self._drain(ids, use_tqdm)

    def _drain(self, ids: list[str], use_tqdm: bool) -> list:
        from tqdm.auto import tqdm

        results: dict[str, Any] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm)
        try:
            while len(results) < len(ids) and self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        bar.update(1)
        finally:
            bar.close()
            self.engine.abort([i for i in ids if i not in results])
        return [results[i] for i in ids]


def _as_list(prompts) -> list:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # a single prompt of token ids
    return list(prompts)


def _broadcast(params, n: int) -> list:
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"sampling_params has {len(params)} entries for {n} prompts; pass one or one per prompt")
        return list(params)
    return [params] * n
