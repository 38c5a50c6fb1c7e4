"""Prompt embeddings as input (vLLM's `EmbedsPrompt`, `enable_prompt_embeds=True`).

    {"prompt_embeds": tensor [T, H]}  ->  checked here  ->  Request.prompt_embeds
    runner: the step's embedding lookup [T_step, H], then the rows of embeds prompts overwritten

A prompt of T embeddings runs as T placeholder token ids (0) through the scheduler and the KV cache;
only the model's input embedding module's output is replaced at those positions (prefill, chunked
prefill and the recompute after a preemption alike), and generated tokens are embedded normally. Its
KV blocks are hashed under a digest of the embeddings, so the prefix cache shares them only with
requests that gave the same embeddings.
"""

from __future__ import annotations

import base64
import hashlib
import io
from contextlib import contextmanager
from dataclasses import dataclass

import torch

FLAG = "enable_prompt_embeds"
PLACEHOLDER_TOKEN_ID = 0  # what the scheduler, the KV cache and RequestOutput.prompt_token_ids see per row


def check_prompt_embeds(embeds, enabled: bool, hidden_size: int) -> torch.Tensor:
    """The tensor a request may run: 2-D [T >= 1, hidden_size], floating point, finite (on the CPU)."""
    if not enabled:
        raise ValueError(f"prompt_embeds needs the engine started with {FLAG}=True (--enable-prompt-embeds)")
    if not isinstance(embeds, torch.Tensor):
        raise ValueError(f"prompt_embeds must be a torch.Tensor [num_tokens, {hidden_size}], got {type(embeds).__name__}")
    if embeds.dim() != 2 or embeds.shape[0] < 1 or embeds.shape[1] != hidden_size:
        raise ValueError(f"prompt_embeds must have shape [num_tokens >= 1, hidden_size={hidden_size}], "
                         f"got {list(embeds.shape)}")
    if not embeds.is_floating_point():
        raise ValueError(f"prompt_embeds must be a floating-point tensor (float32, float16, bfloat16), got {embeds.dtype}")
    embeds = embeds.detach().cpu()
    if not torch.isfinite(embeds).all():
        raise ValueError("prompt_embeds has non-finite values (NaN or inf)")
    return embeds.contiguous()


def embeds_digest(embeds: torch.Tensor) -> str:
    """Identifies the embeddings for the prefix cache (dtype and shape included)."""
    h = hashlib.sha256(f"{embeds.dtype}{list(embeds.shape)}".encode())
    h.update(embeds.contiguous().view(torch.uint8).numpy().tobytes())  # bytes of any dtype (numpy has no bf16)
    return h.hexdigest()


def decode_base64_embeds(data) -> torch.Tensor:
    """The server's `prompt_embeds`: base64 of `torch.save(tensor)` bytes (vLLM's format), loaded weights-only."""
    if not isinstance(data, str):
        raise ValueError(f"prompt_embeds must be a base64 string of torch.save(tensor) bytes, got {type(data).__name__}")
    try:
        tensor = torch.load(io.BytesIO(base64.b64decode(data, validate=True)), weights_only=True, map_location="cpu")
    except Exception as e:
        raise ValueError(f"prompt_embeds is not base64 of torch.save(tensor) bytes: {type(e).__name__}: {e}") from None
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"prompt_embeds must decode to a torch.Tensor, got {type(tensor).__name__}")
    return tensor


def encode_base64_embeds(tensor: torch.Tensor) -> str:
    """The inverse of decode_base64_embeds (clients and tests)."""
    buf = io.BytesIO()
    torch.save(tensor, buf)
    return base64.b64encode(buf.getvalue()).decode()


@dataclass
class StepEmbeds:
    """The rows of one step's flat token row that take given embeddings instead of a lookup."""

    rows: torch.Tensor  # [R] long, indices into the step's T tokens
    values: torch.Tensor  # [R, H]

    @classmethod
    def build(cls, scheduled) -> "StepEmbeds | None":
        """From the step's scheduled requests, in the runner's flattening order: for each, the
        prompt rows of this chunk [start, min(end, num_prompt_tokens)) of its embeddings."""
        rows, values, offset = [], [], 0
        for s in scheduled:
            r, start = s.request, s.request.num_computed_tokens
            embeds = getattr(r, "prompt_embeds", None)
            stop = min(start + s.num_tokens, r.num_prompt_tokens)
            if embeds is not None and start < stop:
                rows.append(torch.arange(offset, offset + stop - start))
                values.append(embeds[start:stop])
            offset += s.num_tokens
        if not rows:
            return None
        return cls(torch.cat(rows), torch.cat([v.float() for v in values]))  # cast to the model's dtype there


def input_embedding_module(model) -> torch.nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    module = get() if get is not None else None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no input embedding module: prompt_embeds cannot run on it")
    return module


@contextmanager
def replaced_embeddings(model, step: StepEmbeds | None):
    """During one forward: the input embedding module's output [.., T, H] gets `step.values` at `step.rows`.
    A forward that did not run the module exactly once (a lookup that bypasses it) is an error, not
    a silent lookup of the placeholder ids."""
    if step is None:
        yield
        return
    calls = []

    def overwrite(module, args, output: torch.Tensor) -> torch.Tensor:
        calls.append(output.shape)
        flat = output.reshape(-1, output.shape[-1])  # [T, H] (a view of the fresh lookup)
        flat[step.rows.to(flat.device)] = step.values.to(flat.device, flat.dtype)
        return flat.view(output.shape)

    handle = input_embedding_module(model).register_forward_hook(overwrite)
    try:
        yield
    finally:
        handle.remove()
    if len(calls) != 1:
        raise RuntimeError(f"{type(model).__name__}: the input embedding module ran {len(calls)} times in one "
                           "forward; prompt embeddings replace exactly one lookup")


def check_embeds_request(params, truncate_prompt_tokens) -> None:
    """What a request given as embeddings cannot ask for (there are no prompt tokens to score or cut)."""
    from anymodel.params import SamplingParams

    if not isinstance(params, SamplingParams):
        raise ValueError("prompt_embeds prompts generate: pooling requests take text or token ids")
    if params.prompt_logprobs is not None:
        raise ValueError("prompt_logprobs is not supported with prompt_embeds (the prompt has no token ids to score)")
    if truncate_prompt_tokens is not None:
        raise ValueError("truncate_prompt_tokens is not supported with prompt_embeds; slice the tensor's rows instead")


def check_engine_supports(args, task: str, paged: bool, executor) -> None:
    """enable_prompt_embeds=True on an engine that cannot run them is refused at start, by name."""
    if not args.enable_prompt_embeds:  # (tensor / pipeline parallelism: refused by EngineArgs)
        return
    if task != "generate":
        raise ValueError(f"{FLAG}=True needs a generating model (task 'generate'), got task {task!r}")
    if not paged:
        raise ValueError(f"{FLAG}=True is not supported on the compat path (the model's own attention): "
                         "it runs native models and the Transformers backend")
    executor.apply_model(input_embedding_module)  # raises, naming the model class, where there is none
