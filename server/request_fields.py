"""What a request body may hold beyond the fields we implement: one screen for every request kind.

    field we implement                         -> validated by the pydantic model
    field OpenAI or vLLM define, not built yet -> 400 naming it (`param`), unless its value asks for
                                                  nothing (the API's default: tools=[], store=false, ...)
    field neither defines                      -> ignored, with one log warning (vLLM's behaviour)
    a string anywhere with a lone surrogate    -> 400: it is not Unicode, and the tokenizer would raise

The tables below are the one place to edit when a feature lands: delete its row and declare the
field on the request model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

logger = logging.getLogger("anymodel.server")

# --max-prompts-per-request: one body may hold this many prompts / inputs. vLLM has no cap; this one
# is OpenAI's own limit on an embeddings `input` list, far above what batch clients send (lm-eval,
# OpenAI's batch tools: tens to hundreds), and it keeps one body from queueing an unbounded amount
# of engine work (each prompt is an engine request with its own KV blocks and stream).
MAX_PROMPTS_PER_REQUEST = 2048


class FieldError(Exception):
    """A request field the server will not run (HTTP 400 with `param`). Not a ValueError on purpose:
    pydantic would wrap a ValueError into a validation error and lose the `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param, self.message = param, message


@dataclass(frozen=True)
class Unsupported:
    reason: str
    allows: tuple = (None,)  # values that ask for nothing: a client sending them gets no 400
    # for the rare rule that reads other fields: True when the body asks for nothing
    harmless: Optional[Callable[[dict], bool]] = None

    def accepts(self, name: str, body: dict) -> bool:
        if self.harmless is not None:
            return self.harmless(body)
        value = body[name]
        # `==` alone would take 0 for False and 1 for True: match the JSON type too
        return any(value == ok and type(value) is type(ok) for ok in self.allows)


_TOOLS = "the legacy function-calling fields are not implemented; send `tools` and `tool_choice`"
_GUIDED = ("the xgrammar backend takes no whitespace pattern; pass structured_outputs "
           '{"disable_any_whitespace": true} for compact JSON')
_NO_TOOLS = ("none", "auto", None)  # with no tools, neither asks for anything

GENERATION: dict[str, Unsupported] = {
    "guided_whitespace_pattern": Unsupported(_GUIDED),
    "logits_processors": Unsupported("request logits processors are code: they are offline-only "
                                     "(SamplingParams.logits_processors)", (None, [])),
    "kv_transfer_params": Unsupported("disaggregated prefill (KV transfer) is not implemented yet"),
    "cache_salt": Unsupported("per-request prefix-cache salts are not implemented yet"),
    "vllm_xargs": Unsupported("vllm_xargs (custom extension arguments) are not implemented yet"),
    "mm_processor_kwargs": Unsupported("multimodal inputs are not implemented yet", (None, {})),
    "service_tier": Unsupported("service tiers do not exist here", (None, "auto", "default")),
    "store": Unsupported("stored completions are not implemented", (None, False)),
    "metadata": Unsupported("metadata goes with stored completions, which are not implemented", (None, {})),
}

COMPLETION: dict[str, Unsupported] = {
    **GENERATION,
    "suffix": Unsupported("suffix (fill-in-the-middle) is not implemented yet", (None, "")),
}

_CHAT_TEMPLATE_INPUTS: dict[str, Unsupported] = {
    "documents": Unsupported("documents for the chat template are not implemented yet", (None, [])),
    "chat_template": Unsupported("a per-request chat template is not allowed; start the server with "
                                 "--chat-template instead"),
    "mm_processor_kwargs": Unsupported("multimodal inputs are not implemented yet", (None, {})),
}

CHAT: dict[str, Unsupported] = {
    **GENERATION,
    **_CHAT_TEMPLATE_INPUTS,
    "functions": Unsupported(_TOOLS, (None, [])),
    "function_call": Unsupported(_TOOLS, _NO_TOOLS),
    "reasoning_effort": Unsupported("reasoning effort is not implemented yet"),
    "audio": Unsupported("audio output is not implemented"),
    "modalities": Unsupported("only text output is implemented", (None, ["text"])),
    "prediction": Unsupported("predicted outputs are not implemented yet"),
    "web_search_options": Unsupported("web search is not implemented"),
}

TOKENIZE: dict[str, Unsupported] = {**_CHAT_TEMPLATE_INPUTS}

POOLING: dict[str, Unsupported] = {
    "mm_processor_kwargs": GENERATION["mm_processor_kwargs"],
    "cache_salt": GENERATION["cache_salt"],
    "messages": Unsupported("chat-style input (messages) is served by /v1/embeddings only"),
    "add_special_tokens": Unsupported("pooling inputs always get the tokenizer's special tokens", (None, True)),
    "embed_dtype": Unsupported("embeddings are returned as float32", (None, "float32")),
}

# /v1/embeddings takes chat `messages` too (vLLM's chat-style embeddings)
EMBEDDING: dict[str, Unsupported] = {k: v for k, v in POOLING.items() if k not in ("messages", "add_special_tokens")}


def screen(kind: str, body: dict, null_is_default: dict[str, bool], table: dict[str, Unsupported]) -> dict:
    """The body minus the fields nobody defines (logged) and the harmless unimplemented ones;
    raises FieldError for a lone surrogate or an unimplemented field that asks for something.

    `null_is_default`: the model's fields, True where a null is dropped so that the default applies:
    OpenAI's optional fields are nullable (`"temperature": null`) even where our type is not.
    """
    check_unicode(body)
    kept, unknown = {}, []
    for name, value in body.items():
        if name in null_is_default:
            if value is not None or not null_is_default[name]:
                kept[name] = value
        elif name in table:
            if not table[name].accepts(name, body):
                raise FieldError(name, f"`{name}` is not supported: {table[name].reason}")
        else:
            unknown.append(name)
    if unknown:
        logger.warning("%s: ignoring fields neither OpenAI nor vLLM define: %s", kind, sorted(unknown))
    return kept


def check_unicode(body: dict) -> None:
    """JSON may carry "\\ud800", a lone UTF-16 surrogate: not text any tokenizer or encoder takes."""
    for name, value in body.items():
        path = _bad_string(value, name)
        if path is not None:
            raise FieldError(name, f"{path} holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode")


def _bad_string(value: Any, path: str) -> Optional[str]:
    """The path of the first string (or key) in `value` that is not Unicode. A loop, not recursion:
    a body may nest deeper than Python's recursion limit."""
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not (value.isascii() or _encodes(value)):
                return path
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str) and not (key.isascii() or _encodes(key)):
                return f"{path} (a key)"
            if isinstance(item, (str, dict, list)):  # numbers: token id lists are long, skip them
                stack.append((item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
