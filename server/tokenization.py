"""POST /tokenize, POST /detokenize and GET /tokenizer_info (vLLM's request and response shapes)."""

from __future__ import annotations

from typing import Any

from .chat import render_chat_request
from .protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


class TokenizationHandler:
    def __init__(self, tokenizer: Any, max_model_len: int, chat_template: str | None):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.chat_template = chat_template

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        if (req.prompt is None) == (req.messages is None):
            raise ValueError("tokenize takes exactly one of `prompt` or `messages`")
        if req.prompt is not None:
            special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = self.tokenizer.encode(req.prompt, add_special_tokens=special)
        else:
            ids = render_chat_request(self.tokenizer, req, self.chat_template)["prompt_token_ids"]
        strs = self.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        size = len(self.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < size]
        if bad:
            raise ValueError(f"tokens must be in [0, {size}); got {bad[:5]}")
        return DetokenizeResponse(prompt=self.tokenizer.decode(req.tokens))

    def info(self) -> dict:
        """What a client needs to tokenize as the server does (vLLM's /tokenizer_info): the class, the
        special tokens, the added tokens, the length limit and the chat template in use."""
        tok = self.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "vocab_size": len(tok),
            "model_max_length": self.max_model_len,
            **{name: getattr(tok, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
            "special_tokens_map": {k: str(v) for k, v in tok.special_tokens_map.items()},
            "added_tokens_decoder": {str(i): t.content for i, t in getattr(tok, "added_tokens_decoder", {}).items()},
            "chat_template": self.chat_template or getattr(tok, "chat_template", None),
        }
