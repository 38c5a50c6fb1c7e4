"""vLLM's module path for the request parameters: `from anymodel.sampling_params import SamplingParams,
StructuredOutputsParams` (the classes live in params.py and structured_output/params.py)."""

from anymodel.params import RequestOutputKind, SamplingParams
from anymodel.structured_output.params import GuidedDecodingParams, StructuredOutputsParams

__all__ = ["SamplingParams", "RequestOutputKind", "StructuredOutputsParams", "GuidedDecodingParams"]
