"""Quantized linears: where a QuantMethod's stored tensors live, for both kinds of model.

    QuantLinear          replaces an HF model's nn.Linear (built on meta) before tensor parallelism cuts
                         it: `weight` stays a meta placeholder of the logical [out, in] shape, which the
                         tensor-parallel styles shrink and record a ShardSpec for; the sharded loader
                         then reads each stored tensor's matching part (adapters/quantized_loading.py)
    quantize_linear      turns a native LinearBase (fused q/k/v, gate/up, row / column parallel) into a
                         quantized one: its stored tensors are parameters named as in the checkpoint,
                         each with a weight_loader that cuts by the layer's `cut(shard_id)`

Which linears are quantized comes from the checkpoint itself (`quantized_prefixes`): a linear whose
checkpoint holds the format's marker tensor (weight_scale_inv, weight_scale, weight_packed, ...).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from anymodel.native_overrides.quantization.checkpoint import tensor_headers
from anymodel.native_overrides.quantization.methods import QuantMethod


def marker_of(method: QuantMethod) -> str:
    """The stored name only a quantized linear of this format has (not `weight`)."""
    return next(s.name for s in method.stored() if s.name != "weight")


def quantized_prefixes(model_dir, method: QuantMethod, rename=None) -> set[str]:
    """Checkpoint module names (or `rename`d ones) whose linear the checkpoint quantizes."""
    names = list(tensor_headers(model_dir))
    if not names:
        raise ValueError(f"model {str(model_dir)!r}: quantized checkpoints load from safetensors files; none found")
    if rename is not None:
        names = rename(names)
    suffix = "." + marker_of(method)
    return {n[: -len(suffix)] for n in names if n.endswith(suffix)}


def stored_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {s.name: getattr(module, s.name) for s in module.quant_method.stored()}


class QuantLinear(nn.Linear):
    """An HF model's linear with quantized storage; `forward` dequantizes (torch reference)."""

    def __init__(self, linear: nn.Linear, method: QuantMethod) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # meta until loaded: the logical shape tensor parallelism cuts
        self.bias = linear.bias
        self.quant_method = method
        self.full_shape = (linear.out_features, linear.in_features)  # before any cut

    def set_stored(self, tensors: dict[str, torch.Tensor]) -> None:
        """Once loaded: the stored tensors become this layer's parameters (replacing the placeholder)."""
        self._parameters.pop("weight", None)
        for name, tensor in tensors.items():
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(stored_tensors(self), (self.out_features, self.in_features), x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_method.name}"


def quantize_linear(layer: nn.Module, method: QuantMethod) -> None:
    """A native LinearBase keeps its (local, fused) logical shape; its float `weight` is replaced
    by the format's stored tensors, loaded through `layer.cut(shard_id)`."""
    out, in_ = layer.logical_shape
    device = layer.weight.device
    del layer.weight
    layer.quant_method = method
    for name, tensor in method.create_weights(out, in_, device).items():
        param = nn.Parameter(tensor, requires_grad=False)
        param.weight_loader = partial(_load_stored, layer, name)
        layer.register_parameter(name, param)


def _load_stored(layer, name: str, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
    layer.quant_method.load_weight(name, param, loaded, layer.cut(shard_id))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (shared tensors once): what the weights take in memory."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta" and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
