"""AWQ and GPTQ checkpoints: int4 (GPTQ: int4 / int8) weights packed into int32 words, with a
scale and a zero point per group of `group_size` input columns. Both store the weight transposed,
[in, out] (the layout of their GEMM kernels); dequantized W [out, in] = ((q - z) * s)^T.

    AWQ (AutoAWQ "gemm")   qweight [in, out/8]      8 output columns per word, in AWQ's order:
                                                    word bits 4i..4i+3 hold column 8c + AWQ_ORDER[i]
                           qzeros  [in/g, out/8]    packed the same way; scales [in/g, out]
    GPTQ (AutoGPTQ v1)     qweight [in/pf, out]     pf = 32/bits input rows per word, row pf*r + i in bits i*bits..
                           qzeros  [in/g, out/pf]   output columns packed in order; stored as zero - 1
                           scales  [in/g, out];  g_idx [in] (the group of each input row)
"""

from __future__ import annotations

import torch

from anymodel.native_overrides.quantization.methods import QuantMethod, Stored, _ceil

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_FIELD_OF = tuple(AWQ_ORDER.index(j) for j in range(8))  # column 8c + j is field AWQ_FIELD_OF[j] of word c


def unpack_last(packed: torch.Tensor, bits: int, field_of: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 [r, c] -> int32 [r, c * 32/bits]: column (32/bits) c + j is field field_of[j] of word c
    (fields counted from the low bits; default: field j), so a packing order costs nothing to undo."""
    fields = field_of or range(32 // bits)
    shifts = torch.tensor([bits * f for f in fields], dtype=torch.int32, device=packed.device)
    values = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [r, c, 32/bits]
    return values.reshape(packed.shape[0], -1)


def dequantize_groups(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """(q - zero) * scale per group of `group` rows: q [in, out], zeros / scales [ceil(in/g), out] ->
    float32 [in, out] (broadcast over whole groups; repeated rows when the last group is partial)."""
    rows = q.shape[0]
    if rows == zeros.shape[0] * group:
        return ((q.view(-1, group, q.shape[1]) - zeros[:, None]).float() * scales[:, None]).view(rows, -1)
    per_row = lambda t: t.repeat_interleave(group, 0)[:rows]  # noqa: E731
    return (q - per_row(zeros)).float() * per_row(scales)


class _PackedInt(QuantMethod):
    def __init__(self, bits: int, group_size: int) -> None:
        self.bits, self.group_size = bits, group_size
        self.per_word = 32 // bits

    def group(self, in_: int) -> int:
        return in_ if self.group_size == -1 else self.group_size

    def _group_axis(self):
        return None if self.group_size == -1 else (0, self.group_size)  # -1: one group, never cut along `in`

    def _scales(self) -> Stored:
        return Stored("scales", torch.float32, lambda o, i: (_ceil(i, self.group(i)), o), (1, 1), self._group_axis())

    def _qzeros(self) -> Stored:
        return Stored("qzeros", torch.int32, lambda o, i: (_ceil(i, self.group(i)), _ceil(o, self.per_word)),
                      (1, self.per_word), self._group_axis())

    def describe(self) -> str:
        group = "per channel" if self.group_size == -1 else f"group {self.group_size}"
        return f"{self.name.upper()} int{self.bits} ({group})"


class Awq(_PackedInt):
    name = "awq"

    def stored(self) -> tuple[Stored, ...]:
        qweight = Stored("qweight", torch.int32, lambda o, i: (i, _ceil(o, 8)), (1, 8), (0, 1))
        return qweight, self._qzeros(), self._scales()

    def dequantize(self, t, shape, dtype) -> torch.Tensor:
        out, in_ = shape
        q = unpack_last(t["qweight"], 4, AWQ_FIELD_OF)[:, :out]  # [in, out]
        z = unpack_last(t["qzeros"], 4, AWQ_FIELD_OF)[:, :out]  # [in/g, out]
        return dequantize_groups(q, z, t["scales"], self.group(in_)).t().to(dtype)


class Gptq(_PackedInt):
    name = "gptq"

    def __init__(self, bits: int, group_size: int, zero_offset: int) -> None:
        super().__init__(bits, group_size)
        self.zero_offset = zero_offset  # v1 checkpoints store zero - 1

    def stored(self) -> tuple[Stored, ...]:
        qweight = Stored("qweight", torch.int32, lambda o, i: (_ceil(i, self.per_word), o), (1, 1), (0, self.per_word))
        g_idx = Stored("g_idx", torch.int32, lambda o, i: (i,), None, (0, 1))
        return qweight, self._qzeros(), self._scales(), g_idx

    def load_weight(self, name, param, loaded, cut) -> None:
        if name == "g_idx" and loaded.numel():  # without desc_act, row i is in group i // g (a shard: from its
            # first group on); anything else is refused
            expected = torch.arange(loaded.numel(), dtype=loaded.dtype) // self.group(loaded.numel())
            if not torch.equal(loaded - loaded[0], expected):
                raise ValueError("GPTQ g_idx is not in row order although desc_act is False: refusing the checkpoint")
        super().load_weight(name, param, loaded, cut)

    def dequantize(self, t, shape, dtype) -> torch.Tensor:
        out, in_ = shape
        q = unpack_last(t["qweight"].t().contiguous(), self.bits).t()[:in_]  # [in, out]
        z = unpack_last(t["qzeros"], self.bits)[:, :out] + self.zero_offset  # [in/g, out]
        # groups are contiguous runs of g rows (desc_act is refused): this rank's rows start a group
        return dequantize_groups(q, z, t["scales"], self.group(in_)).t().to(dtype)


def _group_size(raw: dict, method: str) -> int:
    g = raw.get("group_size", raw.get("q_group_size", 128))
    if not isinstance(g, int) or (g < 1 and g != -1):
        raise ValueError(f"{method} group_size must be a positive integer or -1, got {g!r}")
    return g


def awq_method(raw: dict) -> Awq:
    bits = raw.get("bits", raw.get("w_bit", 4))
    version = str(raw.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not raw.get("zero_point", True):
        raise ValueError(f"AWQ bits={bits!r}, version={version!r}, zero_point={raw.get('zero_point', True)!r} is "
                         "not supported; supported: bits=4, version='gemm', zero_point=True")
    return Awq(4, _group_size(raw, "awq"))


def gptq_method(raw: dict) -> Gptq:
    bits, fmt = raw.get("bits", 4), raw.get("checkpoint_format", "gptq")
    if bits not in (4, 8) or fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"GPTQ bits={bits!r}, checkpoint_format={fmt!r} is not supported; supported: bits in "
                         "[4, 8], checkpoint_format in ['gptq', 'gptq_v2']")
    if raw.get("desc_act"):
        raise ValueError("GPTQ desc_act=True (activation order, a permuted g_idx) is not supported; "
                         "supported: desc_act=False")
    return Gptq(bits, _group_size(raw, "gptq"), zero_offset=1 if fmt == "gptq" else 0)
