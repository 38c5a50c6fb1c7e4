"""Paged-KV attention for anymodel: the function registered with Transformers and its backends."""

from anymodel.attention_backend.forward_context import ForwardContext
from anymodel.attention_backend.metadata import AttentionMetadata

ATTN_IMPLEMENTATION = "anymodel_paged"

__all__ = ["AttentionMetadata", "ForwardContext", "ATTN_IMPLEMENTATION"]
