"""anymodel: serve any Hugging Face Transformers model over a paged KV cache."""

from anymodel.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from anymodel.llm import LLM
from anymodel.logging_config import configure_logging
from anymodel.lora.request import LoRARequest
from anymodel.outputs import (ClassificationRequestOutput, CompletionOutput, EmbeddingRequestOutput,
                              PoolingRequestOutput, RequestOutput, ScoringRequestOutput)
from anymodel.params import PoolingParams, SamplingParams
from anymodel.structured_output.params import GuidedDecodingParams, StructuredOutputsParams

configure_logging()  # INFO to stderr in vLLM's format, unless the application logs them itself

__all__ = ["LLM", "SamplingParams", "PoolingParams", "RequestOutput", "CompletionOutput", "PoolingRequestOutput",
           "EmbeddingRequestOutput", "ClassificationRequestOutput", "ScoringRequestOutput",
           "BeamSearchParams", "BeamSearchOutput", "BeamSearchSequence", "StructuredOutputsParams", "GuidedDecodingParams",
           "LoRARequest"]
__version__ = "0.1.0"
