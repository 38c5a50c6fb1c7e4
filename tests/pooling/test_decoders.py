"""Generative and base architectures as pooling models (the seed's embed / reward / classify rows
that Transformers implements), against hand-computed references from plain Transformers."""

import tempfile

import pytest
import torch
import transformers

from anymodel import LLM, PoolingParams
from tests.models.zoo import cached_model, mixed_prompts, save_random_model
from tests.pooling.conftest import KV
from tests.pooling.encoders import cached_encoder

PROMPTS = mixed_prompts(n=6)  # 1 .. 31 tokens of the zoo's vocab


def _ids(prompts):
    return [{"prompt_token_ids": p} for p in prompts]


def _hidden(base, prompts, **kwargs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [base(torch.tensor([p]), **kwargs).last_hidden_state[0] for p in prompts]


def _embeddings(llm, prompts, params=None) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in llm.embed(_ids(prompts), params, use_tqdm=False)])


# (zoo arch, checkpoint kind, task to ask for): LlamaModel / MistralModel / Qwen2Model / Gemma2Model
# are embedders on their own (task auto); *ForCausalLM needs task="embed" (as_embedding_model).
DECODER_EMBED_ROWS = [
    ("llama", "embed", "auto"), ("llama", "causal_lm", "embed"), ("mistral", "embed", "auto"),
    ("qwen2", "embed", "auto"), ("qwen2", "causal_lm", "embed"), ("gemma2", "embed", "auto"),
]


@pytest.mark.parametrize("arch, kind, task", DECODER_EMBED_ROWS, ids=["-".join(r[:2]) for r in DECODER_EMBED_ROWS])
def test_decoder_embeddings_are_last_token_normalised(arch, kind, task):
    path = cached_model(arch, for_task=kind)
    llm = LLM(str(path), task=task, **KV)
    assert llm.engine.task == "embed"
    base = transformers.AutoModel.from_pretrained(path).eval()
    ref = torch.stack([torch.nn.functional.normalize(h[-1], dim=-1) for h in _hidden(base, PROMPTS)])
    assert torch.allclose(_embeddings(llm, PROMPTS), ref, atol=1e-4)


def test_mean_pooling_override():
    path = cached_model("llama", for_task="embed")
    llm = LLM(str(path), override_pooler_config={"pooling_type": "MEAN", "normalize": False}, **KV)
    base = transformers.AutoModel.from_pretrained(path).eval()
    ref = torch.stack([h.mean(0) for h in _hidden(base, PROMPTS)])
    assert torch.allclose(_embeddings(llm, PROMPTS), ref, atol=1e-4)


# BERT / RoBERTa base models: CLS, normalised (vLLM's default for them)
ENCODER_EMBED_ROWS = [("bert", "BertModel"), ("roberta", "RobertaModel"), ("roberta", "RobertaForMaskedLM")]


@pytest.mark.parametrize("model_type, arch", ENCODER_EMBED_ROWS, ids=[r[1] for r in ENCODER_EMBED_ROWS])
def test_encoder_embeddings_are_cls_normalised(model_type, arch):
    path = cached_encoder(model_type, arch)
    llm = LLM(str(path), **KV)
    assert llm.engine.task == "embed"
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    tok = transformers.AutoTokenizer.from_pretrained(path)
    base = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = torch.stack([base(**tok(t, return_tensors="pt")).last_hidden_state[0, 0] for t in texts])
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    assert torch.allclose(ours, torch.nn.functional.normalize(ref, dim=-1), atol=1e-4)


def _modernbert(local_attention: int):
    out = tempfile.mkdtemp(prefix="anymodel-modernbert-")
    config = transformers.ModernBertConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, global_attn_every_n_layers=2, local_attention=local_attention)
    config.architectures = ["ModernBertModel"]
    save_random_model(transformers.ModernBertModel, config, out)
    return out


@pytest.mark.parametrize("local_attention", [
    128,  # the local window never binds on these prompts
    8,  # it binds: bidirectional window, |q - k| < w on both sides
])
def test_modernbert_embeddings(local_attention):
    path = _modernbert(local_attention)
    llm = LLM(path, **KV)
    base = transformers.AutoModel.from_pretrained(path).eval()
    ref = torch.stack([torch.nn.functional.normalize(h[0], dim=-1) for h in _hidden(base, PROMPTS)])
    assert torch.allclose(_embeddings(llm, PROMPTS), ref, atol=1e-4)


def test_llama_sequence_classification_matches_hf():
    path = cached_model("llama", for_task="classify")  # LlamaForSequenceClassification, 3 labels
    llm = LLM(str(path), **KV)
    assert llm.engine.task == "classify"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        ref = torch.stack([hf(torch.tensor([p])).logits[0] for p in PROMPTS])
    outs = llm.classify(_ids(PROMPTS), use_tqdm=False)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in outs]), ref.softmax(-1), atol=1e-4)
    raw = llm.encode(_ids(PROMPTS), PoolingParams(softmax=False), use_tqdm=False, pooling_task="classify")
    assert torch.allclose(torch.stack([o.outputs.data for o in raw]), ref, atol=1e-4)


def test_jamba_classification_runs_on_the_compat_path():
    """JambaForSequenceClassification (seed row): Mamba layers keep per-sequence state, so each
    request runs alone through the model's own forward."""
    out = tempfile.mkdtemp(prefix="anymodel-jamba-")
    config = transformers.JambaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, num_experts=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, num_labels=1,
        pad_token_id=0, max_position_embeddings=512)
    config.architectures = ["JambaForSequenceClassification"]
    model = save_random_model(transformers.JambaForSequenceClassification, config, out)
    llm = LLM(out, **KV)
    assert llm.engine.task == "classify" and not llm.engine.paged
    with torch.no_grad():
        ref = torch.stack([model(torch.tensor([p])).logits[0] for p in PROMPTS]).sigmoid()  # 1 label
    outs = llm.classify(_ids(PROMPTS), use_tqdm=False)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in outs]), ref, atol=1e-4)


@pytest.fixture(scope="module")
def llama_lm():
    path = cached_model("llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return path, hf


def test_reward_returns_every_token_hidden_state_activated_by_default(llama_lm):
    """vLLM's token_classify default: use_activation=True (softmax over the last dim, even without a
    label head); use_activation=False gives the hidden states raw."""
    path, hf = llama_lm
    llm = LLM(str(path), task="reward", **KV)
    outs = llm.reward(_ids(PROMPTS), use_tqdm=False)
    raw = llm.reward(_ids(PROMPTS), PoolingParams(use_activation=False), use_tqdm=False)
    for out, plain, ref in zip(outs, raw, _hidden(hf.model, PROMPTS)):
        assert plain.outputs.data.shape == ref.shape and torch.allclose(plain.outputs.data, ref, atol=1e-4)
        assert torch.allclose(out.outputs.data, ref.softmax(-1), atol=1e-5)


def test_step_reward_reads_returned_token_logits_at_step_tags(llama_lm):
    """math-shepherd style: softmax over the logits of the `returned_token_ids` at each step tag."""
    path, hf = llama_lm
    tag, returned = PROMPTS[5][3], [5, 9]
    prompts = [p + [tag] for p in PROMPTS]  # every prompt ends a step
    llm = LLM(str(path), task="reward", **KV, override_pooler_config={
        "pooling_type": "STEP", "step_tag_id": tag, "returned_token_ids": returned, "softmax": True})
    outs = llm.reward(_ids(prompts), use_tqdm=False)
    with torch.no_grad():
        for out, p in zip(outs, prompts):
            logits = hf(torch.tensor([p])).logits[0]
            ref = logits[torch.tensor(p) == tag][:, returned].softmax(-1)
            assert out.outputs.data.shape == ref.shape and torch.allclose(out.outputs.data, ref, atol=1e-4)


def test_step_reward_without_returned_ids_gives_tag_hidden_states(llama_lm):
    path, hf = llama_lm
    tag = PROMPTS[5][3]
    llm = LLM(str(path), task="reward", override_pooler_config={"pooling_type": "STEP", "step_tag_id": tag,
                                                                "softmax": False}, **KV)
    (out,) = llm.reward(_ids(PROMPTS[5:]), use_tqdm=False)
    ref = _hidden(hf.model, PROMPTS[5:])[0][torch.tensor(PROMPTS[5]) == tag]
    assert torch.allclose(out.outputs.data, ref, atol=1e-4)
