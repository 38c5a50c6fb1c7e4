"""Chat messages as the chat template takes them, and the fields that steer the template.

Shared by /v1/chat/completions and /tokenize; checked at validation, so that a malformed message
is a 400 naming it instead of an error inside the template.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .tool_protocol import ChatTool

class ChatMessage(BaseModel):
    # extra="allow": tool_calls, tool_call_id, ... reach the chat template untouched
    model_config = ConfigDict(extra="allow")

    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        """Content parts: only {"type": "text", "text": str} is supported."""
        for part in content if isinstance(content, list) else []:
            if part.get("type") != "text":
                raise ValueError(f"unsupported message content part type {part.get('type')!r}; supported: ['text']")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"a text content part needs a string `text`, got {part.get('text')!r}")
        return content

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessage":
        # OpenAI: only an assistant message (one that calls tools) may come without content
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role!r} message needs `content` (a string or a list of text parts)")
        return self

    def for_template(self) -> dict[str, Any]:
        msg = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            msg["content"] = "".join(part["text"] for part in self.content)
        return msg


# apply_chat_template's own arguments, and the names it renders with: not for chat_template_kwargs
_RESERVED_TEMPLATE_KWARGS = {
    "chat_template": "use the server's --chat-template", "tokenize": "the server renders to text itself",
    "messages": "send `messages` as the request field", "conversation": "send `messages` as the request field",
    "add_generation_prompt": "send it as a request field", "continue_final_message": "send it as a request field",
    "tools": "send `tools` as the request field", "documents": "documents are not implemented yet",
    "return_dict": "the server renders to text itself", "return_tensors": "the server renders to text itself",
    "tokenizer_kwargs": "the server tokenizes itself", "padding": "the server tokenizes itself",
    "truncation": "the server tokenizes itself", "max_length": "the server tokenizes itself",
    "return_assistant_tokens_mask": "the server renders to text itself",
}


class TemplateFields(BaseModel):
    """How chat `messages` are rendered: shared by chat completions and /tokenize."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None  # extra variables for the template (enable_thinking, ...)
    tools: Optional[list[ChatTool]] = None  # the chat template's `tools` (and, in chat, what tool_choice picks from)

    def template_kwargs(self) -> dict[str, Any]:
        """Extra variables for the chat template: chat_template_kwargs and the tools."""
        tools = {"tools": [t.model_dump(exclude_none=True) for t in self.tools]} if self.tools else {}
        return {**(self.chat_template_kwargs or {}), **tools}

    @field_validator("chat_template_kwargs")
    @classmethod
    def _not_reserved(cls, kwargs: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        for key in kwargs or {}:
            if key in _RESERVED_TEMPLATE_KWARGS:
                raise ValueError(f"{key!r} may not be set here: {_RESERVED_TEMPLATE_KWARGS[key]}")
        return kwargs
