"""Decode graphs (runtime/worker/cuda_graph.py): static buffers, padding rows, size choice.

On CPU the graph path runs with `eager_capture` (same buffers, padding and slicing, no recording),
so every test here but the GPU ones checks the whole mechanism except the CUDA graph itself; the
`gpu` tests record real graphs and compare with eager decoding.
"""

import logging

import pytest
import torch

from anymodel import LLM, SamplingParams
from anymodel.attention_backend import torch_ref
from anymodel.attention_backend.metadata import AttentionMetadata
from anymodel.worker.cuda_graph import DecodeBuffers, GraphSpec, capture_sizes, eager_capture
from tests.models.zoo import build_tiny_model, mixed_prompts


def _runner(worker):
    """The worker's ModelRunner (collective_rpc hands each worker to the function)."""
    return worker.runner


def test_capture_sizes():
    assert capture_sizes(256) == (1, 2, 4, *range(8, 257, 8))
    assert capture_sizes(5) == (1, 2, 4, 5)
    assert capture_sizes(8) == (1, 2, 4, 8)
    assert capture_sizes(1) == (1,)
    assert capture_sizes(2000)[-2:] == (504, 512)


def _decode_meta(seq_lens, tables, slots) -> AttentionMetadata:
    n = len(seq_lens)
    return AttentionMetadata(
        query_start_loc=torch.arange(n + 1, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor(tables, dtype=torch.int32), slot_mapping=torch.tensor(slots),
        max_query_len=1, max_seq_len=max(seq_lens), block_size=4,
    )


def test_buffers_pad_rows_after_a_larger_step():
    buf = DecodeBuffers.allocate(rows=8, max_blocks=3, device=torch.device("cpu"))
    big = _decode_meta([9] * 6, [[5, 6, 7]] * 6, [40 + i for i in range(6)])
    buf.load(torch.arange(6)[None] + 10, torch.full((1, 6), 8), big, size=8)
    small = _decode_meta([3, 6], [[1, 0], [2, 3]], [10, 13])
    buf.load(torch.tensor([[7, 8]]), torch.tensor([[2, 5]]), small, size=4)
    assert buf.input_ids[0, :4].tolist() == [7, 8, 0, 0]
    assert buf.positions[0, :4].tolist() == [2, 5, 0, 0]
    assert buf.seq_lens[:4].tolist() == [3, 6, 1, 1]  # padding: one key, never a stale real length
    assert buf.slot_mapping[:4].tolist() == [10, 13, -1, -1]  # padding writes nothing
    assert buf.block_tables[:4, 0].tolist() == [1, 2, 0, 0]
    assert buf.block_tables[1, :2].tolist() == [2, 3]
    meta = buf.metadata(4, max_seq_len=12, block_size=4)
    assert meta.num_reqs == 4 and meta.query_start_loc.tolist() == [0, 1, 2, 3, 4] and meta.max_seq_len == 12


def test_graph_metadata_sees_each_load_in_place():
    """A graph keeps one frozen metadata over the buffers: loading a step refills its tensors."""
    buf = DecodeBuffers.allocate(rows=4, max_blocks=2, device=torch.device("cpu"))
    meta = buf.metadata(2, max_seq_len=8, block_size=4)
    for seq_lens, slots in (([3, 6], [10, 13]), ([4, 7], [11, 14])):
        buf.load(torch.tensor([[7, 8]]), torch.tensor([[2, 5]]), _decode_meta(seq_lens, [[1, 0], [2, 3]], slots), size=2)
        assert meta.seq_lens.tolist() == seq_lens and meta.slot_mapping.tolist() == slots


def test_torch_store_skips_negative_slots():
    key_cache, value_cache = torch.zeros(2, 4, 1, 2), torch.zeros(2, 4, 1, 2)
    k = torch.arange(6.0).view(3, 1, 2)
    torch_ref.store_kv(k, -k, key_cache, value_cache, torch.tensor([5, -1, 2]))
    flat = key_cache.view(-1, 2)
    assert flat[5].tolist() == [0.0, 1.0] and flat[2].tolist() == [4.0, 5.0]
    assert flat.abs().sum() == 10.0 and value_cache.sum() == -10.0  # nothing else written


def _generate(llm, prompts, max_tokens):
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _with_eager_graphs(llm, max_num_seqs: int):
    runner = llm.collective_rpc(_runner)[0]
    runner.capture_decode_graphs(GraphSpec(capture_sizes(max_num_seqs), llm.engine.max_model_len, eager_capture))
    return runner


@pytest.mark.parametrize("model_impl", ["native", "transformers"])
def test_graph_path_matches_eager(model_impl, tmp_path):
    """5 requests finishing at different steps: graphs of 8, 4, 2 and 1 rows serve the decode steps,
    with 3, 2, 1 padding rows; prefill steps run eagerly. Tokens equal plain eager decoding."""
    path = build_tiny_model("llama", tmp_path / "llama")
    prompts = mixed_prompts(path, n=5, seed=4)
    max_tokens = [9, 3, 6, 12, 1]
    kwargs = dict(dtype="float32", model_impl=model_impl, block_size=4, max_num_seqs=8)
    expected = _generate(LLM(str(path), **kwargs), prompts, max_tokens)
    llm = LLM(str(path), **kwargs)
    runner = _with_eager_graphs(llm, max_num_seqs=8)
    assert sorted(runner.graphs.replays) == [1, 2, 4, 8]
    assert _generate(llm, prompts, max_tokens) == expected
    assert runner.graphs.num_replays == max(max_tokens) - 1  # every decode step, none of the prefills
    # requests arriving while others decode: mixed prefill/decode steps run eagerly, the rest replay
    assert _generate(llm, prompts[:3] * 3, [4, 7, 2] * 3) == _generate(LLM(str(path), **kwargs), prompts[:3] * 3, [4, 7, 2] * 3)


def test_enforce_eager_false_on_cpu_stays_eager(tmp_path, caplog):
    path = build_tiny_model("llama", tmp_path / "llama")
    with caplog.at_level(logging.INFO, logger="anymodel"):
        llm = LLM(str(path), dtype="float32", enforce_eager=False, device="cpu")
    assert llm.collective_rpc(_runner)[0].graphs is None
    assert "decode runs eagerly: device 'cpu'" in caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("model_impl", ["native", "transformers"])
def test_cuda_graphs_match_eager_on_gpu(model_impl, tmp_path):
    path = build_tiny_model("llama", tmp_path / "llama")
    prompts = mixed_prompts(path, n=5, seed=4)
    max_tokens = [9, 3, 6, 12, 1]
    kwargs = dict(dtype="float32", model_impl=model_impl, attention_backend="triton", device="cuda", max_num_seqs=8)
    expected = _generate(LLM(str(path), enforce_eager=True, **kwargs), prompts, max_tokens)
    llm = LLM(str(path), enforce_eager=False, **kwargs)
    runner = llm.collective_rpc(_runner)[0]
    assert runner.graphs is not None, "capture failed: see the warning in the log"
    assert _generate(llm, prompts, max_tokens) == expected
    assert runner.graphs.num_replays == max(max_tokens) - 1
