"""Paged-KV attention for anymodel: the function registered with Transformers and its backends."""

from anymodel.attention_backend.metadata import AttentionMetadata

ATTN_IMPLEMENTATION = "anymodel_paged"

__all__ = ["AttentionMetadata", "ATTN_IMPLEMENTATION"]
