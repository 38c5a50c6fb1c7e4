"""anymodel: serve any Hugging Face Transformers model over a paged KV cache."""

from anymodel.llm import LLM
from anymodel.outputs import (ClassificationRequestOutput, CompletionOutput, EmbeddingRequestOutput,
                              PoolingRequestOutput, RequestOutput, ScoringRequestOutput)
from anymodel.params import PoolingParams, SamplingParams

__all__ = ["LLM", "SamplingParams", "PoolingParams", "RequestOutput", "CompletionOutput", "PoolingRequestOutput",
           "EmbeddingRequestOutput", "ClassificationRequestOutput", "ScoringRequestOutput"]
__version__ = "0.1.0"
