"""Pooling tasks under tensor (and pipeline) parallelism, multiprocess executor, gloo, float32: the
base model is cut by its plan (BERT's inferred from its names), the heads stay whole, and every
output equals the single process. In-process checks (plans, refusals) need no ranks: sharding
runs on meta, and the errors come before any collective.

    qwen2 causal LM, task="embed"       Qwen2Model from a *ForCausalLM checkpoint, last token, normalised
                                        (also pipeline_parallel_size=2: the last stage pools)
    llama *ForSequenceClassification    3 labels: softmax probs and raw logits (the `score` head)
    BertModel, task auto (embed)        CLS, normalised; no base_model_tp_plan: inferred
    BERT / RoBERTa cross-encoders       score: HF's head run unchanged on whole hidden states
    tinyplan causal LM, task="reward"   STEP logits from an LM head tied to a vocab-parallel embedding
"""

import pytest
import torch
import transformers

from anymodel import LLM, PoolingParams
from anymodel.adapters.parallel import build_on_meta, resolve_tp_plan
from anymodel.adapters.pooling_loader import load_pooling_model
from anymodel.distributed import ParallelState
from tests.models.zoo import build_tiny_model, cached_model, mixed_prompts
from tests.parallel import probes
from tests.pooling.encoders import cached_encoder, tiny_config

ENGINE = dict(dtype="float32", num_kv_blocks=64, max_num_batched_tokens=256)
PROMPTS = [{"prompt_token_ids": p} for p in mixed_prompts(n=6)]  # 1 .. 31 tokens, several per step
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a", "paris is the capital of france"]


def _run(path, fn, tp: int = 2, pp: int = 1, **kwargs):
    """fn(llm) in one process and on tp x pp ranks, and the ranks' parameter shapes (rank order)."""
    single = fn(LLM(str(path), **ENGINE, **kwargs))
    llm = LLM(str(path), tensor_parallel_size=tp, pipeline_parallel_size=pp, **ENGINE, **kwargs)
    try:
        return single, fn(llm), llm.apply_model(probes.param_shapes)
    finally:
        llm.engine.shutdown()


def _embeddings(llm, prompts=PROMPTS) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(prompts, use_tqdm=False)])


def _classified(llm) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.tensor([o.outputs.probs for o in llm.classify(PROMPTS, use_tqdm=False)])
    raw = llm.encode(PROMPTS, PoolingParams(softmax=False), use_tqdm=False, pooling_task="classify")
    return probs, torch.stack([o.outputs.data for o in raw])


def test_decoder_embeddings_equal_single_process():
    single, tp2, shapes = _run(cached_model("qwen2"), _embeddings, task="embed")
    assert tp2.shape == (len(PROMPTS), 64) and torch.allclose(tp2, single, atol=1e-5)
    # hidden 64, 4 heads x 16 (2 KV heads), MLP 128, vocab 384: each rank holds half
    for rank in shapes:
        assert rank["model.layers.0.self_attn.q_proj.weight"] == (32, 64) and rank["model.layers.0.self_attn.k_proj.bias"] == (16,)
        assert rank["model.layers.0.mlp.down_proj.weight"] == (64, 64) and rank["model.embed_tokens.weight"] == (192, 64)
        assert not any(name.startswith("lm_head") for name in rank)  # an embedder drops the LM head


def test_decoder_classifier_equals_single_process():
    (probs, logits), (tp_probs, tp_logits), shapes = _run(cached_model("llama", for_task="classify"), _classified)
    assert tp_logits.shape == (len(PROMPTS), 3)
    assert torch.allclose(tp_logits, logits, atol=1e-5) and torch.allclose(tp_probs, probs, atol=1e-5)
    for rank in shapes:  # the label head reads whole hidden states: whole on every rank
        assert rank["model.layers.0.self_attn.o_proj.weight"] == (64, 32) and rank["head.weight"] == (3, 64)


def test_bert_embeddings_equal_single_process():
    """BertModel declares no base_model_tp_plan: query/key/value + attention.output.dense and
    intermediate.dense + output.dense are inferred (hidden 32, 4 heads x 8, MLP 64)."""
    single, tp2, shapes = _run(cached_encoder("bert", "BertModel"), lambda llm: _embeddings(llm, TEXTS))
    assert torch.allclose(tp2, single, atol=1e-5)
    for rank in shapes:
        assert rank["model.encoder.layer.0.attention.self.query.weight"] == (16, 32)
        assert rank["model.encoder.layer.0.attention.output.dense.weight"] == (32, 16)
        assert rank["model.encoder.layer.0.intermediate.dense.weight"] == (32, 32)
        assert rank["model.encoder.layer.0.output.dense.weight"] == (32, 32)
        assert rank["model.pooler.dense.weight"] == (32, 32) and rank["model.embeddings.position_embeddings.weight"][1] == 32


@pytest.mark.parametrize("model_type, arch", [("bert", "BertForSequenceClassification"),
                                             ("roberta", "RobertaForSequenceClassification")])
def test_cross_encoder_scores_equal_single_process(model_type, arch):
    """1-label encoder classifiers (BERT: token_type_ids + pooler; RoBERTa: its own positions)."""
    pairs = list(zip(TEXTS, reversed(TEXTS)))

    def scores(llm):
        outs = llm.score([a for a, _ in pairs], [b for _, b in pairs], use_tqdm=False)
        return torch.tensor([o.outputs.score for o in outs])

    single, tp2, shapes = _run(cached_encoder(model_type, arch, num_labels=1), scores)
    assert torch.allclose(tp2, single, atol=1e-5)
    assert all(rank["model.encoder.layer.0.attention.self.key.weight"] == (16, 32) for rank in shapes)


def test_pipeline_parallel_embeddings_equal_single_process():
    """Each stage runs its layers; only the last stage (rank 1) pools, and its output comes back."""
    single, pp2, shapes = _run(cached_model("qwen2"), _embeddings, tp=1, pp=2, task="embed")
    assert torch.allclose(pp2, single, atol=1e-5)
    assert [("model.embed_tokens.weight" in r, "model.norm.weight" in r) for r in shapes] == [(True, False), (False, True)]


def test_step_reward_with_tied_lm_head_equals_single_process(tmp_path):
    """tinyplan: tied embeddings, vocab 385 -> embedding rows 193 / 192 per rank; the LM head, a
    pooling head here, is read whole from the embedding's tensor on every rank."""
    path = build_tiny_model("tinyplan", tmp_path / "tinyplan")
    prompts = [{"prompt_token_ids": p["prompt_token_ids"] + [7]} for p in PROMPTS]  # 7: a step tag ends each
    step = {"pooling_type": "STEP", "step_tag_id": 7, "returned_token_ids": [5, 9], "softmax": True}

    def rewards(llm):
        return [o.outputs.data for o in llm.reward(prompts, use_tqdm=False)]

    single, tp2, shapes = _run(path, rewards, task="reward", trust_remote_code=True, override_pooler_config=step)
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-5) for a, b in zip(tp2, single))
    assert [r["model.wte.weight"] for r in shapes] == [(193, 48), (192, 48)]
    assert all(r["lm.lm_head.weight"] == (385, 48) for r in shapes)


# ---- in process: plans and refusals (sharding on meta needs no collectives) --------------------------
def test_pooling_plan_keeps_heads_whole():
    """Inferred for BERT, restricted to the base model: pooler and classifier are not in the plan."""
    config = tiny_config("bert", "BertForSequenceClassification")
    hf = build_on_meta(transformers.BertForSequenceClassification, config, torch.float32)
    plan = resolve_tp_plan(hf, None)
    assert plan == {
        "bert.embeddings.word_embeddings": "embedding_rowwise",
        **{f"bert.encoder.layer.*.attention.self.{p}": "colwise" for p in ("query", "key", "value")},
        "bert.encoder.layer.*.attention.output.dense": "rowwise",
        "bert.encoder.layer.*.intermediate.dense": "colwise",
        "bert.encoder.layer.*.output.dense": "rowwise",
    }


def test_compat_models_refuse_tensor_parallel(tmp_path):
    """Recurrent (Jamba) and other compat-path models run each request alone: one process only."""
    config = transformers.JambaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_labels=1)
    config.architectures = ["JambaForSequenceClassification"]
    with pytest.raises(ValueError, match=r"JambaForSequenceClassification runs on the compat path.*tensor_parallel_size=1"):
        load_pooling_model("classify", tmp_path, config, torch.float32, {}, state=ParallelState(tp_rank=0, tp_size=2))


def test_encoders_without_a_pipeline_plan_refuse_pipeline_parallel():
    """BERT's layers sit in encoder.layer, not a direct child list: no stage plan can be inferred."""
    path = cached_encoder("bert", "BertModel")
    config = transformers.AutoConfig.from_pretrained(path)
    with pytest.raises(ValueError, match=r"BertModel has no base_model_pp_plan.*pipeline_parallel_size=1"):
        load_pooling_model("embed", path, config, torch.float32, {}, state=ParallelState(pp_rank=0, pp_size=2))


def test_classify_without_a_trained_head_says_so():
    """A causal LM checkpoint read as *ForSequenceClassification: sharded loading finds no `score`."""
    path = cached_model("llama")
    config = transformers.AutoConfig.from_pretrained(path)
    with pytest.raises(ValueError, match=r"LlamaForSequenceClassification: .* no trained head \(\['score.weight'\]"):
        load_pooling_model("classify", path, config, torch.float32, {}, state=ParallelState(tp_rank=0, tp_size=2))
