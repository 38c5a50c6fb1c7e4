"""Every tensor-parallel style, checked numerically inside a 2-rank gloo world.

Each case builds a small module twice: whole (seeded, the reference) and on meta, sharded by a
plan, loaded from the whole module's safetensors through `get_slice`. Outputs must match.
Run by tests/parallel/test_styles.py via torch.multiprocessing.spawn (importable, not a test file).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anymodel import distributed
from anymodel.adapters.parallel import apply_tensor_plan
from anymodel.adapters.sharded_loader import load_sharded


class MLP(nn.Module):
    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.gate_up_proj = nn.Linear(16, 2 * 11, bias=False)  # 11: uneven over 2 ranks
        self.down_proj = nn.Linear(11, 16, bias=True)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class SelfAttention(nn.Module):
    """Reshapes through self.num_heads / self.num_key_value_heads, like remote code does."""

    def __init__(self, kv_heads: int, fused: bool):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim, self.fused = 4, kv_heads, 4, fused
        q, kv = 4 * 4, kv_heads * 4
        if fused:
            self.qkv_proj = nn.Linear(16, q + 2 * kv, bias=True)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, n, bias=True) for n in (q, kv, kv))
        self.o_proj = nn.Linear(q, 16, bias=True)
        self.sinks = nn.Parameter(torch.randn(4))  # one per query head, like gpt-oss attention sinks

    def forward(self, x):  # x [B, T, 16]
        b, t, _ = x.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        if self.fused:
            q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (y.view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2) for y in (k, v))
        groups = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True) * self.sinks.view(1, -1, 1, 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(16, 13, bias=True)
        self.gate = nn.Linear(13, 13, bias=False)
        self.proj_out = nn.Linear(13, 16, bias=True)

    def forward(self, x):
        h = self.proj_in(x)
        return self.proj_out(torch.tanh(self.gate(h)) * h)


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.vocab = nn.Embedding(13, 16)  # 13: uneven vocab shards (7 / 6)
        self.wide = nn.Embedding(13, 11)  # 11: uneven hidden shards

    def forward(self, ids):
        return torch.cat([self.vocab(ids), self.wide(ids)], dim=-1)


class Doubler(nn.Module):
    def forward(self, x):
        return x * 1.0


class PackedIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2 * 6, 5, bias=True)

    def forward(self, x):  # x is the packed [a | b] input; each rank feeds its [a_r | b_r]
        return self.proj(x)


def _tokens():
    return torch.tensor([[3, 0, 12, 7, 6, 5]])


def _hidden():
    return torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))


CASES = {
    "colwise+rowwise (gate_up packed)": (MLP, {"gate_up_proj": "packed_colwise", "down_proj": "rowwise"}, _hidden),
    "attention q/k/v colwise, KV split": (
        lambda: SelfAttention(2, False),
        {"q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise", "o_proj": "rowwise", "sinks": "colwise"},
        _hidden,
    ),
    "attention, 1 KV head replicated": (
        lambda: SelfAttention(1, False),
        {"q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise", "o_proj": "rowwise", "sinks": "colwise"},
        _hidden,
    ),
    "attention fused qkv packed_colwise, KV replicated": (
        lambda: SelfAttention(1, True),
        {"qkv_proj": "packed_colwise", "o_proj": "rowwise", "sinks": "colwise"},
        _hidden,
    ),
    "colwise_gather_output + replicate + rowwise_split_input": (
        Mix, {"proj_in": "colwise_gather_output", "gate": "replicate", "proj_out": "rowwise_split_input"}, _hidden,
    ),
    "colwise_rep + rowwise_rep (aliases)": (Mix, {"proj_in": "colwise_rep", "proj_out": "rowwise_rep"}, _hidden),
    "embedding_rowwise + embedding_colwise": (
        Embeddings, {"vocab": "embedding_rowwise", "wide": "embedding_colwise"}, _tokens,
    ),
}


def check_case(name: str, rank: int, out_dir) -> None:
    make, plan, inputs = CASES[name]
    torch.manual_seed(0)
    whole = make()
    x = inputs()
    with torch.no_grad():
        expected = whole(x)
    from safetensors.torch import save_file

    folder = out_dir / f"{abs(hash(name))}-rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in whole.state_dict().items()}, folder / "model.safetensors")
    with torch.device("meta"):
        sharded = make()
    specs = apply_tensor_plan(sharded, plan, distributed.get_parallel_state())
    load_sharded(sharded, folder, specs, torch.float32, tied={})
    with torch.no_grad():
        got = sharded(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert sum(p.numel() for p in sharded.parameters()) < sum(p.numel() for p in whole.parameters()) or "replicate" in name


def check_packed_rowwise(rank: int, out_dir) -> None:
    """packed_rowwise: the input holds two fused blocks, each rank feeds its half of each block."""
    torch.manual_seed(0)
    whole = PackedIn()
    x = torch.randn(1, 3, 12)
    expected = whole(x).detach()
    mine = torch.cat([x[..., rank * 3 : rank * 3 + 3], x[..., 6 + rank * 3 : 6 + rank * 3 + 3]], dim=-1)
    from safetensors.torch import save_file

    folder = out_dir / f"packed-rowwise-rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(whole.state_dict()), folder / "model.safetensors")
    with torch.device("meta"):
        sharded = PackedIn()
    specs = apply_tensor_plan(sharded, {"proj": "packed_rowwise"}, distributed.get_parallel_state())
    load_sharded(sharded, folder, specs, torch.float32, tied={})
    torch.testing.assert_close(sharded(mine).detach(), expected, atol=1e-5, rtol=1e-5)


def check_all_reduce(rank: int) -> None:
    wrapper = nn.Sequential(Doubler())
    apply_tensor_plan(wrapper, {"0": "all_reduce"}, distributed.get_parallel_state())
    x = torch.full((2, 3), float(rank + 1))
    torch.testing.assert_close(wrapper(x), torch.full((2, 3), 3.0))  # 1 + 2 summed over ranks


def check_local_heads(rank: int) -> None:
    """Attention modules read this rank's head counts after sharding."""
    with torch.device("meta"):
        attn = SelfAttention(1, True)
    apply_tensor_plan(attn, {"qkv_proj": "packed_colwise", "o_proj": "rowwise"}, distributed.get_parallel_state())
    assert (attn.num_heads, attn.num_key_value_heads) == (2, 1)
    assert tuple(attn.qkv_proj.weight.shape) == ((2 + 2 * 1) * 4, 16)


def run_rank(rank: int, port: int, out_dir) -> None:
    """torch.multiprocessing.spawn entry: rank in a world of 2."""
    torch.set_num_threads(1)
    distributed.init_distributed(rank, 2, 1, f"tcp://127.0.0.1:{port}", backend="gloo")
    try:
        for name in CASES:
            check_case(name, rank, out_dir)
        check_packed_rowwise(rank, out_dir)
        check_all_reduce(rank)
        check_local_heads(rank)
    finally:
        distributed.destroy_distributed()
