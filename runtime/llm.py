"""The offline API, in vLLM's shape: LLM(...).generate / chat / apply_model (+ the pooling methods:
embed / classify / score / reward / encode, in llm_pooling.py)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from anymodel.config import EngineArgs
from anymodel.engine_control import EngineControlMixin
from anymodel.errors import RequestFailedError
from anymodel.pooling.offline import PoolingMixin
from anymodel.outputs import RequestOutput
from anymodel.params import SamplingParams


class LLM(PoolingMixin, EngineControlMixin):
    """An engine in this process. `LLM()` with no model runs the embedded demo model."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        from anymodel.engine.engine import Engine

        self.engine_args = EngineArgs.from_kwargs(model, kwargs)
        self.engine = Engine(self.engine_args)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """vLLM's: SamplingParams with the model's generation_config.json defaults (temperature, top_p,
        top_k, min_p, repetition_penalty, max_new_tokens as max_tokens); plain SamplingParams() with
        generation_config="vllm" or none in the file. `generate` uses them when given no params."""
        return self.engine.default_params()

    def generate(
        self,
        prompts,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: list[int] | None = None,
        lora_request=None,
    ) -> list[RequestOutput]:
        """Generate for one prompt or a list; results come back in input order. `priority`: one
        integer per prompt (lower runs first) for an engine with scheduling_policy="priority".
        `lora_request`: one `LoRARequest` for every prompt or a list (one per prompt, None: the base model).

        A request that fails while it runs (its sampling or output processing raised) does not stop
        the others: once they all completed, a RequestFailedError naming the first failed prompt is
        raised, with every result on its `.outputs` (None for the failed ones)."""
        prompts = _as_list(prompts)
        params = _broadcast(self.get_default_sampling_params() if sampling_params is None else sampling_params,
                            len(prompts))
        loras = _broadcast(lora_request, len(prompts), "lora_request")
        return self._run(prompts, params, use_tqdm, _priorities(priority, len(prompts)), loras)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """vLLM's LLM.chat: one conversation (a list of messages) or a list of them. Every keyword
        is honoured or refused; an unknown keyword is a TypeError, as Python makes it. `tools` go to the
        chat template; the output is the raw text, tool calls and all (as vLLM's LLM.chat)."""
        if add_generation_prompt and continue_final_message:
            raise ValueError("continue_final_message=True continues the last (assistant) message: pass "
                             "add_generation_prompt=False with it")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        template_kwargs = _chat_kwargs(chat_template_kwargs)
        if tools is not None:
            template_kwargs["tools"] = tools
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("chat renders the chat template with the tokenizer, and this LLM has none "
                             "(skip_tokenizer_init=True); pass token ids to generate() instead")
        template = chat_template or self.engine_args.chat_template
        prompts = [_render(tok, conv, template, add_generation_prompt, continue_final_message, template_kwargs)
                   for conv in conversations]
        # The template already holds any BOS it wants: tokenize without adding special tokens again.
        inputs = [{"prompt": p, "prompt_token_ids": tok.encode(p, add_special_tokens=False)} for p in prompts]
        return self.generate(inputs, sampling_params, use_tqdm, lora_request=lora_request)

    def beam_search(self, prompts, params, lora_request: Any = None, use_tqdm: bool = False,
                    concurrency_limit: int | None = None) -> list:
        """vLLM's LLM.beam_search: for each prompt (text, token ids or a prompt dict), the best
        `params.beam_width` sequences by Transformers' beam search (runtime/beam_search.py), as a
        list of BeamSearchOutput; `concurrency_limit`: how many prompts are searched at once."""
        from anymodel.beam_search import run_offline

        _refuse_unsupported(lora_request=lora_request)
        prompts = _as_list(prompts)
        if concurrency_limit is not None and not (isinstance(concurrency_limit, int) and concurrency_limit >= 1):
            raise ValueError(f"concurrency_limit must be None or an integer >= 1, got {concurrency_limit!r}")
        step = concurrency_limit or max(len(prompts), 1)
        return [out for at in range(0, len(prompts), step)
                for out in run_offline(self, prompts[at:at + step], params, use_tqdm)]

    def apply_model(self, fn: Callable) -> list:
        """fn(model) on every worker; the model is the adapter or native class."""
        return self.engine.apply_model(fn)

    def describe(self) -> str:
        """What runs and why: the model loader's decision, each worker's layers (native or Transformers
        code, pipeline stage, tensor-parallel styles), attention and the KV cache. `print(llm.describe())`."""
        from anymodel.describe import describe

        return describe(self)

    def collective_rpc(self, method: str | Callable, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None) -> list:
        """vLLM's `collective_rpc`: `method` on every worker, results in rank order. A string names a
        Worker method (`worker.runner`, `worker.model`, `worker.device` are its state); a callable is
        called as fn(worker, *args, **kwargs) (with several ranks it travels cloudpickled)."""
        if timeout is not None:
            raise ValueError("collective_rpc(timeout=...) is not supported yet; pass timeout=None")
        return self.engine.collective_rpc(method, tuple(args), kwargs)

    def _run(self, prompts: list, params: list, use_tqdm: bool, priorities: list[int] | None = None,
             loras: list | None = None) -> list:
        engine = self.engine
        self._check_awake()
        ids = []
        try:
            for prompt, p, priority, lora in zip(prompts, params, priorities or [0] * len(prompts),
                                                 loras or [None] * len(prompts)):
                rid = engine.new_request_id()
                engine.add_request(rid, prompt, p, priority=priority, lora_request=lora)
                ids.append(rid)
        except Exception:
            engine.abort(ids)
            raise
        return self._drain(ids, use_tqdm)

    def _drain(self, ids: list[str], use_tqdm: bool) -> list:
        """Step until every request finished. A request that failed inside a step (RequestFailedError)
        does not stop the others: they all complete, then the first failure is raised, naming the
        request's position in the input (the completed outputs are on the error, `.outputs`, with
        None for each failed one)."""
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
        outputs = [results[i] for i in ids]
        _raise_first_failure(outputs)
        return outputs


def _raise_first_failure(outputs: list) -> None:
    failed = [i for i, out in enumerate(outputs) if getattr(out, "error", None) is not None]
    if not failed:
        return
    first, failed_set = outputs[failed[0]], set(failed)
    error = RequestFailedError(first.request_id, f"prompt {failed[0]} of {len(outputs)} ({first.error}); "
                                                 f"{len(failed)} failed, {len(outputs) - len(failed)} completed")
    error.outputs = [None if i in failed_set else out for i, out in enumerate(outputs)]
    raise error from first.error


# Keys the engine sets itself; in chat_template_kwargs they would clash with its own arguments.
_RESERVED_TEMPLATE_KEYS = ("chat_template", "tokenize", "messages", "conversation", "add_generation_prompt",
                           "continue_final_message")


def _chat_kwargs(chat_template_kwargs: dict | None) -> dict:
    """vLLM's chat_template_kwargs: extra variables for the template (e.g. enable_thinking)."""
    if chat_template_kwargs is None:
        return {}
    if not isinstance(chat_template_kwargs, dict):
        raise ValueError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
    clash = [k for k in chat_template_kwargs if k in _RESERVED_TEMPLATE_KEYS]
    if clash:
        raise ValueError(f"chat_template_kwargs must not set {clash[0]!r} (reserved: {list(_RESERVED_TEMPLATE_KEYS)}); "
                         "pass chat_template / add_generation_prompt / continue_final_message as LLM.chat arguments")
    return dict(chat_template_kwargs)


def _render(tok, conversation, template, add_generation_prompt: bool, continue_final_message: bool,
            template_kwargs: dict) -> str:
    import jinja2

    try:
        return tok.apply_chat_template(conversation, chat_template=template, add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final_message, tokenize=False,
                                       **template_kwargs)
    except jinja2.TemplateError as e:  # includes raise_exception() inside templates: bad input, as in the server
        raise ValueError(f"chat template failed: {e}") from e


def _refuse_unsupported(**options) -> None:
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"{name} is not supported by anymodel yet; pass {name}=None")


def _as_list(prompts) -> list:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # a single prompt of token ids
    return list(prompts)


def _priorities(priority, n: int) -> list | None:
    if priority is not None and (not isinstance(priority, (list, tuple)) or len(priority) != n):
        raise ValueError(f"priority must be None or a list with one integer per prompt ({n}), got {priority!r}")
    return priority


def _broadcast(params, n: int, name: str = "sampling_params") -> list:
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"{name} has {len(params)} entries for {n} prompts; pass one or one per prompt")
        return list(params)
    return [params] * n
