"""Which quantization a checkpoint uses: read from config.json's `quantization_config` (the text
config's too, for multimodal configs), checked against `LLM(quantization=...)`, and against the
tensors themselves (a checkpoint with float8 / packed-int tensors but no quantization_config is
refused: never loaded as if plain).

    QuantConfig.method     "fp8" | "compressed-tensors" | "awq" | "gptq"
    QuantConfig.raw        the quantization_config dict as written
    resolve_quantization(config, requested, model_dir) -> QuantConfig | None   (ValueError: refused)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anymodel.model_facts import text_config_of
from anymodel.native_overrides.quantization.checkpoint import unmarked_quantized_tensors

# vLLM's names for what a checkpoint may say (or `quantization=` may name); the ones we load:
SUPPORTED = ("fp8", "compressed-tensors", "awq", "gptq")
# Methods refused with a reason beyond "not implemented"
_REFUSED = {
    "bitsandbytes": "its NF4 / FP4 / LLM.int8 weights are not implemented by anymodel's quantized linears (nor are "
                    "bitsandbytes' kernels used, on CPU or GPU); use an AWQ / GPTQ / compressed-tensors W4A16 "
                    "checkpoint of the model instead",
    "gguf": "pass the .gguf file itself as the model (LLM(model='x.gguf', tokenizer=...)): it is dequantized at load",
}
# vLLM's `quantization=` aliases of the checkpoint's quant_method
_ALIASES = {"compressed_tensors": "compressed-tensors", "awq_marlin": "awq", "gptq_marlin": "gptq"}


@dataclass(frozen=True)
class QuantConfig:
    method: str
    raw: dict = field(hash=False, compare=False)

    def describe(self) -> str:
        return describe(self)


def raw_quantization_config(config) -> dict | None:
    """config.json's quantization_config (the text config's for multimodal models), as a dict."""
    for c in (config, text_config_of(config)):
        q = getattr(c, "quantization_config", None)
        if q:
            return q if isinstance(q, dict) else q.to_dict()
    return None


def canonical(method: str) -> str:
    method = method.lower()
    return _ALIASES.get(method, method)


def resolve_quantization(config, requested: str | None, model_dir) -> QuantConfig | None:
    """The checkpoint's quantization, or None for a plain checkpoint; a ValueError when anymodel
    cannot load it exactly (unsupported method, `quantization=` contradicting the checkpoint,
    quantized tensors with no quantization_config)."""
    raw = raw_quantization_config(config)
    if raw is None:
        if requested is not None:
            raise ValueError(
                f"quantization={requested!r}: the checkpoint has no quantization_config, and anymodel does not "
                f"quantize plain checkpoints at load; pass quantization=None or a quantized checkpoint "
                f"(supported: {list(SUPPORTED)})")
        found = unmarked_quantized_tensors(model_dir)
        if found:
            raise ValueError(
                f"model {str(model_dir)!r}: config.json has no quantization_config, but the checkpoint holds "
                f"quantized tensors ({', '.join(found[:4])}); refusing to load them as plain weights "
                f"(add the checkpoint's quantization_config; supported methods: {list(SUPPORTED)})")
        return None
    method = raw.get("quant_method")
    if not isinstance(method, str):
        raise ValueError(f"quantization_config has no quant_method (got {sorted(raw)}); supported: {list(SUPPORTED)}")
    method = canonical(method)
    if requested is not None and canonical(requested) != method:
        raise ValueError(f"quantization={requested!r} contradicts the checkpoint's quantization_config "
                         f"(quant_method {raw['quant_method']!r}); pass quantization=None or {method!r}")
    if method in _REFUSED:
        raise ValueError(f"quantization method {raw['quant_method']!r} is not supported: {_REFUSED[method]}; "
                         f"supported: {list(SUPPORTED)}")
    if method not in SUPPORTED:
        raise ValueError(f"unsupported quantization method {raw['quant_method']!r} (quantization_config."
                         f"quant_method); supported: {list(SUPPORTED)}")
    quant = QuantConfig(method, raw)
    from anymodel.native_overrides.quantization.methods import method_for

    method_for(quant)  # a format detail we cannot load (bits, strategy, ...) is refused here, before loading
    return quant


def describe(quant: QuantConfig | None) -> str:
    if quant is None:
        return "none"
    from anymodel.native_overrides.quantization.methods import method_for

    return f"{quant.method}: {method_for(quant).describe()}"
