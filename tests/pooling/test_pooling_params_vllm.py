"""PoolingParams as vLLM has them: per-request activation (use_activation, and its older names
activation / softmax), normalize, dimensions and truncate_prompt_tokens honoured per request; the
options each kind of request takes; encode() asking for pooling_task where the model answers
several kinds; reward models activated by default, checked against plain Transformers."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from anymodel import LLM, PoolingParams
from tests.pooling.conftest import KV
from tests.pooling.encoders import cached_encoder

TEXTS = ["the quick brown fox", "a b c d e f", "hello"]


def _hf(path, arch, texts):
    model = getattr(transformers, arch).from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")) for t in texts]


def test_activation_names_are_one_option():
    for name in ("use_activation", "activation", "softmax"):
        p = PoolingParams(**{name: False})
        assert (p.use_activation, p.activation, p.softmax) == (False, False, False)
    assert PoolingParams(use_activation=True, softmax=True).softmax is True
    with pytest.raises(ValueError, match="must agree"):
        PoolingParams(use_activation=True, activation=False)
    with pytest.raises(TypeError, match="normalize must be None or a bool"):
        PoolingParams(normalize="yes")


@pytest.fixture(scope="module")
def bert_embedder():
    path = cached_encoder("bert", "BertModel")
    return path, LLM(str(path), hf_overrides={"is_matryoshka": True}, **KV)


def test_embed_options_per_request(bert_embedder):
    path, llm = bert_embedder
    cls = torch.stack([o.last_hidden_state[0, 0] for o in _hf(path, "BertModel", TEXTS)])  # CLS pooling
    mixed = [PoolingParams(), PoolingParams(normalize=False), PoolingParams(dimensions=8)]
    outs = [llm.embed([t], p, use_tqdm=False)[0].outputs.embedding for t, p in zip(TEXTS, mixed)]
    assert torch.allclose(torch.tensor(outs[0]), F.normalize(cls[0], dim=-1), atol=1e-5)
    assert torch.allclose(torch.tensor(outs[1]), cls[1], atol=1e-4)  # not normalized
    assert torch.allclose(torch.tensor(outs[2]), F.normalize(cls[2, :8], dim=-1), atol=1e-5)  # truncated, then normalized
    # in one batch, each request keeps its own options
    batch = llm.embed(TEXTS, mixed, use_tqdm=False)
    assert all(torch.allclose(torch.tensor(b.outputs.embedding), torch.tensor(o), atol=1e-5) for b, o in zip(batch, outs))
    short = llm.embed(TEXTS[0], PoolingParams(truncate_prompt_tokens=3), use_tqdm=False)[0]
    assert len(short.prompt_token_ids) == 3


def test_each_kind_takes_its_own_options(bert_embedder):
    _, llm = bert_embedder
    with pytest.raises(ValueError, match=r"Task embed only supports \['dimensions', 'normalize'\] parameters, "
                                         r"does not support \['use_activation'\] parameters"):
        llm.embed("hello", PoolingParams(use_activation=True), use_tqdm=False)
    assert len(llm.encode("hello", PoolingParams(use_activation=False), use_tqdm=False)) == 1  # encode: any


@pytest.fixture(scope="module")
def bert_classifier():
    path = cached_encoder("bert", "BertForSequenceClassification", num_labels=3)
    return path, LLM(str(path), **KV)


def test_classify_use_activation_per_request(bert_classifier):
    path, llm = bert_classifier
    logits = torch.stack([o.logits[0] for o in _hf(path, "BertForSequenceClassification", TEXTS)])
    on = llm.classify(TEXTS, use_tqdm=False)
    off = llm.classify(TEXTS, [PoolingParams(use_activation=False), PoolingParams(activation=False),
                               PoolingParams(softmax=False)], use_tqdm=False)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in on]), logits.softmax(-1), atol=1e-5)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in off]), logits, atol=1e-4)
    with pytest.raises(ValueError, match=r"Task classify only supports \['use_activation'\] parameters, "
                                         r"does not support \['normalize'\] parameters"):
        llm.classify("hello", PoolingParams(normalize=True), use_tqdm=False)


def test_encode_needs_pooling_task_when_the_model_answers_several():
    path = cached_encoder("bert", "BertForSequenceClassification", num_labels=1)
    llm = LLM(str(path), **KV)  # a cross-encoder: score and classify
    with pytest.raises(ValueError, match="pooling_task required for `LLM.encode`"):
        llm.encode("hello", use_tqdm=False)
    score = llm.encode("hello", use_tqdm=False, pooling_task="score")[0].outputs.data
    assert torch.allclose(score, llm.encode("hello", use_tqdm=False, pooling_task="encode")[0].outputs.data)


@pytest.mark.parametrize("num_labels, act", [(3, lambda x: x.softmax(-1)), (1, torch.sigmoid)])
def test_reward_model_applies_vllm_default_activation(num_labels, act):
    path = cached_encoder("bert", "BertForTokenClassification", num_labels=num_labels)
    llm = LLM(str(path), **KV)
    assert llm.engine.task == "reward"
    logits = [o.logits[0] for o in _hf(path, "BertForTokenClassification", TEXTS)]  # [T, L] per text
    default = llm.reward(TEXTS, use_tqdm=False)
    raw = llm.reward(TEXTS, PoolingParams(use_activation=False), use_tqdm=False)
    for d, r, ref in zip(default, raw, logits):
        assert d.outputs.data.shape == ref.shape
        assert torch.allclose(d.outputs.data, act(ref), atol=1e-5)
        assert torch.allclose(r.outputs.data, ref, atol=1e-4)
    assert llm.encode(TEXTS[:1], use_tqdm=False)[0].outputs.data.shape == logits[0].shape  # one kind: no task needed
    vllm_name = llm.encode(TEXTS[:1], use_tqdm=False, pooling_task="token_classify")[0].outputs.data
    assert torch.allclose(vllm_name, default[0].outputs.data)  # vLLM's newer name of a reward request
