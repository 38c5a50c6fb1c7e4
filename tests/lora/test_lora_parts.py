"""The LoRA engine parts on their own: shrink / expand against a per-token loop, the scheduler's
slot limit, and the prefix-cache hash that keeps adapters apart."""

import torch

from anymodel import LoRARequest, SamplingParams
from anymodel.engine.request import Request
from anymodel.engine.scheduler import Scheduler
from anymodel.kv_cache import KVCacheManager
from anymodel.lora.ops import LoRAMapping, lora_expand, lora_shrink


def _per_token(x, a, b, y, slots):
    """The definition: y[t] + B[s] A[s] x[t] for each token t of slot s >= 0."""
    out = y.clone()
    for t, s in enumerate(slots):
        if s >= 0:
            out[t] += b[s] @ (a[s] @ x[t])
    return out


def test_shrink_expand_equal_the_per_token_definition():
    torch.manual_seed(0)
    S, R, T, n_in, n_out = 3, 4, 9, 8, 6
    a, b = torch.randn(S, R, n_in), torch.randn(S, n_out, R)
    x, y = torch.randn(T, n_in), torch.randn(T, n_out)
    for slots in ([-1, 0, 2, 2, -1, 1, 0, 0, 2], [1] * T, [-1] * 4 + [0] * 5):
        mapping = LoRAMapping.build(slots, torch.device("cpu"))
        got = lora_expand(y, lora_shrink(x, a, mapping), b, mapping)
        torch.testing.assert_close(got, _per_token(x, a, b, y, slots), atol=1e-5, rtol=1e-5)
    assert LoRAMapping.build([-1] * T, torch.device("cpu")) is None  # base only: the layers skip LoRA


def _request(rid: str, lora_id: int, n: int = 4) -> Request:
    r = Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=10), max_tokens=10)
    r.lora_request = LoRARequest(f"l{lora_id}", lora_id, "/x") if lora_id else None
    return r


def test_scheduler_admits_no_more_adapters_than_slots():
    sched = Scheduler(KVCacheManager(64, 4), max_num_seqs=8, max_num_batched_tokens=64, max_loras=2)
    for rid, lora in (("a", 1), ("b", 2), ("c", 3), ("d", 0), ("e", 1)):
        sched.add(_request(rid, lora))
    out = sched.schedule()
    # c (a third adapter) waits; the base request and a's adapter behind it still start
    assert [s.request.request_id for s in out.scheduled] == ["a", "b", "d", "e"]
    assert [r.request_id for r in sched.waiting] == ["c"]
    sched.update(out)
    sched.finish(sched.running[1], sched.running[1].status.FINISHED_STOPPED)  # b ends: its slot frees
    assert [s.request.request_id for s in sched.schedule().scheduled][-1] == "c"


def test_prefix_cache_hits_only_within_one_adapter():
    kv = KVCacheManager(64, 4)
    first = _request("first", 1, 13)
    assert kv.allocate_slots(first, 13)  # 3 full blocks cached under adapter 1
    hits = {lora: kv.get_computed_blocks(_request(f"r{lora}", lora, 13))[1] for lora in (0, 1, 2)}
    assert hits == {0: 0, 1: 12, 2: 0}
