"""LLM.describe(): the model loader's decision, each worker's layers and attention, the KV cache; and
the README's tensor x pipeline `apply_model` example, run as written."""

import re
from pathlib import Path

import pytest

from anymodel import LLM
from tests.models.zoo import build_tiny_model

README = Path(__file__).resolve().parents[2] / "README.md"


def _kv_bytes_per_block(llm) -> int:
    def per_block(worker):
        return sum(k[0].numel() * k.element_size() * 2 for k, _ in worker.runner.kv_caches)

    return max(llm.collective_rpc(per_block))


def test_demo_model_native():
    llm = LLM()
    text = llm.describe()
    assert isinstance(text, str) and text.startswith("anymodel: what runs and why\n")
    assert "decision      native (rule native): native LlamaForCausalLM: hand-written" in text
    assert "model class   LlamaForCausalLM (native code)" in text
    assert "quantization  none\n" in text and "LoRA          none\n" in text
    assert f"max_model_len {llm.engine.max_model_len}\n" in text
    kv = f"{llm.engine.kv.pool.num_blocks} blocks x 16 tokens, {_kv_bytes_per_block(llm)} bytes per block"
    assert f"KV cache      {kv}" in text and "dtype float32" in text
    assert "worker: model.layers[0:3] of 3; attention through anymodel's paged attention: 3 calls for 3 layers" in text
    assert "  3 x LlamaDecoderLayer (native code)" in text
    assert "tensor-parallel" not in text  # one worker


def test_transformers_backend(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", model_impl="transformers", num_kv_blocks=32)
    text = llm.describe()
    assert "decision      transformers (rule transformers): Transformers backend: LlamaForCausalLM" in text
    assert "model class   TransformersForCausalLM (anymodel adapter)" in text
    assert "x LlamaDecoderLayer (Transformers code)" in text
    assert re.search(r"attention through anymodel's paged attention: (\d+) calls for \1 layers", text)
    assert f"KV cache      32 blocks x 16 tokens, {_kv_bytes_per_block(llm)} bytes per block" in text
    assert f"model         {tiny_model_dir} (revision default), LlamaForCausalLM, task generate" in text


def test_moe_experts_path_is_listed(tmp_path):
    """Each experts module's path: ours for a class on Transformers' experts interface."""
    path = build_tiny_model("qwen3_moe", tmp_path / "qwen3_moe")
    text = LLM(str(path), dtype="float32", model_impl="transformers", num_kv_blocks=32).describe()
    assert "  MoE experts: 2 x Qwen3MoeExperts: anymodel experts function" in text


def test_compat_path_says_the_model_keeps_its_own_attention(tmp_path):
    path = build_tiny_model("bloom", tmp_path / "bloom")
    llm = LLM(str(path), dtype="float32", num_kv_blocks=16)
    text = llm.describe()
    assert "decision      compat (rule compat)" in text
    assert "attention: the model's own (no paged KV cache)" in text
    assert "KV cache      none of ours: the model keeps its own cache" in text
    assert "(Transformers code)" in text


def _readme_parallel_example() -> str:
    """The `llm.apply_model(...)` line of the README's tensor and pipeline parallelism section."""
    section = README.read_text().split("## Tensor and pipeline parallelism", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith("llm.apply_model("))
    return line.split("#", 1)[0].strip()


def test_readme_tensor_x_pipeline_example_runs_on_every_stage_and_describe_shows_the_layout(tmp_path):
    MODEL = str(build_tiny_model("llama", tmp_path / "llama"))  # noqa: N806 (the README's name)
    llm = LLM(MODEL, tensor_parallel_size=2, pipeline_parallel_size=2, num_kv_blocks=32)
    try:
        shapes = eval(_readme_parallel_example(), {"llm": llm})  # the README's line, as written
        text = llm.describe()
    finally:
        llm.engine.shutdown()
    assert len(shapes) == 4 and all(shapes)  # one entry per rank, none empty: each stage shows its own layers
    # zoo llama: 2 layers, MLP 128 cut in two; ranks 0, 1 own layer 0 (stage 0), ranks 2, 3 layer 1
    assert [sorted({n.split(".")[2] for n in s}) for s in shapes] == [["0"], ["0"], ["1"], ["1"]]
    assert all(shape == (64, 64) for s in shapes for n, shape in s.items() if "gate_proj" in n)
    assert "layout        tensor_parallel_size=2 pipeline_parallel_size=2 (4 workers)" in text
    for rank, (tp, pp) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        assert f"rank {rank} (tp {tp}, pp {pp}): model.layers[{pp}:{pp + 1}] of 2; " in text
    assert text.count("self_attn.q_proj colwise") == 4 and text.count("mlp.down_proj rowwise") == 4
