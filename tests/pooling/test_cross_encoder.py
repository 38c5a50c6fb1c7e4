"""Cross-encoders (the seed's `score` rows) and encoder classifiers: tiny random BERT / RoBERTa /
XLM-R *ForSequenceClassification against plain Transformers (float32, one unpadded pair at a time)."""

import pytest
import torch
import transformers

from anymodel import LLM, PoolingParams
from tests.pooling.conftest import KV
from tests.pooling.encoders import cached_encoder

SCORE_ROWS = [
    ("bert", "BertForSequenceClassification"),
    ("roberta", "RobertaForSequenceClassification"),
    ("xlm-roberta", "XLMRobertaForSequenceClassification"),
]
PAIRS = [
    ("what is the capital of france", "paris is the capital of france"),
    ("hello", "the quick brown fox jumps over the lazy dog"),
    ("a", "b c d"),
    ("who was there in the morning", "they were at the house by the river in the evening and the night"),
]


def hf_logits(path, architecture, pairs) -> torch.Tensor:
    model = getattr(transformers, architecture).from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return torch.stack([model(**tok(a, b, return_tensors="pt")).logits[0] for a, b in pairs])


def pair_prompt(llm, a: str, b: str) -> dict:
    """The pair tokenized together, as Transformers' reference above and `llm.score` do."""
    enc = llm.get_tokenizer()(a, b)
    prompt = {"prompt_token_ids": list(enc["input_ids"])}
    if enc.get("token_type_ids") is not None:
        prompt["token_type_ids"] = list(enc["token_type_ids"])
    return prompt


@pytest.fixture(scope="module", params=SCORE_ROWS, ids=[r[0] for r in SCORE_ROWS])
def cross_encoder(request):
    model_type, arch = request.param
    path = cached_encoder(model_type, arch, num_labels=1)
    return path, arch, LLM(str(path), **KV)


def test_auto_task_is_score(cross_encoder):
    _, _, llm = cross_encoder
    assert llm.engine.task == "score"
    assert llm.apply_model(lambda m: type(m).__name__) == ["TransformersForSequenceClassification"]


def test_scores_match_hf(cross_encoder):
    path, arch, llm = cross_encoder
    ref = torch.sigmoid(hf_logits(path, arch, PAIRS)[:, 0])  # 1 label: sigmoid, as vLLM
    outs = llm.score([a for a, _ in PAIRS], [b for _, b in PAIRS], use_tqdm=False)
    assert torch.allclose(torch.tensor([o.outputs.score for o in outs]), ref, atol=1e-4)


def test_raw_logits_match_hf(cross_encoder):
    path, arch, llm = cross_encoder
    prompts = [pair_prompt(llm, a, b) for a, b in PAIRS]
    outs = llm.encode(prompts, PoolingParams(softmax=False), use_tqdm=False, pooling_task="score")
    assert torch.allclose(torch.stack([o.outputs.data for o in outs]), hf_logits(path, arch, PAIRS), atol=1e-4)


def test_one_to_many_and_many_to_many(cross_encoder):
    _, _, llm = cross_encoder
    query, docs = PAIRS[0][0], [b for _, b in PAIRS]
    one_to_n = [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)]
    n_to_n = [o.outputs.score for o in llm.score([query] * len(docs), docs, use_tqdm=False)]
    assert one_to_n == pytest.approx(n_to_n, abs=1e-6) and len(one_to_n) == len(docs)
    with pytest.raises(ValueError, match="text_1 has 2 texts and text_2 4"):
        llm.score([query, query], docs, use_tqdm=False)


def test_token_type_ids_reach_the_model():
    path = cached_encoder("bert", "BertForSequenceClassification", num_labels=1)
    llm = LLM(str(path), **KV)
    with_types = pair_prompt(llm, *PAIRS[0])
    assert set(with_types["token_type_ids"]) == {0, 1}
    without = {k: v for k, v in with_types.items() if k != "token_type_ids"}
    a, b = llm.encode([with_types, without], PoolingParams(softmax=False), use_tqdm=False, pooling_task="score")
    assert not torch.allclose(a.outputs.data, b.outputs.data)  # segment B embeddings were used
    assert torch.allclose(a.outputs.data, hf_logits(path, "BertForSequenceClassification", PAIRS[:1])[0], atol=1e-4)
    [scored] = llm.score(*PAIRS[0], use_tqdm=False)  # score() builds the same prompt, segment ids included
    assert scored.prompt_token_ids == with_types["prompt_token_ids"]
    assert scored.outputs.score == pytest.approx(torch.sigmoid(a.outputs.data[0]).item(), abs=1e-6)


@pytest.mark.parametrize("model_type, arch", SCORE_ROWS, ids=[r[0] for r in SCORE_ROWS])
def test_classify_three_labels_matches_hf_softmax(model_type, arch):
    path = cached_encoder(model_type, arch, num_labels=3)
    llm = LLM(str(path), **KV)
    assert llm.engine.task == "classify"
    texts = ["hello world", "the cat and the dog", "paris"]
    outs = llm.classify(texts, use_tqdm=False)
    model = getattr(transformers, arch).from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        ref = torch.stack([model(**tok(t, return_tensors="pt")).logits[0] for t in texts]).softmax(-1)
    assert torch.allclose(torch.tensor([o.outputs.probs for o in outs]), ref, atol=1e-4)
    with pytest.raises(ValueError, match="score needs a cross-encoder"):
        llm.score("a", "b", use_tqdm=False)


def test_roberta_positions_start_after_padding_idx():
    from anymodel.adapters.pooling import hf_position_ids
    from anymodel.attention_backend.metadata import AttentionMetadata

    path = cached_encoder("roberta", "RobertaForSequenceClassification", num_labels=1)
    base = transformers.RobertaModel.from_pretrained(path)
    ids = torch.tensor([[0, 50, 60, 2, 0, 70, 2]])  # two requests: 4 + 3 tokens
    meta = AttentionMetadata(torch.tensor([0, 4, 7]), torch.tensor([4, 3]), torch.zeros(2, 1, dtype=torch.int32),
                             torch.arange(7), max_query_len=4, max_seq_len=4, block_size=16)
    pos = hf_position_ids(base, ids, torch.tensor([[0, 1, 2, 3, 0, 1, 2]]), meta)
    assert pos.tolist() == [[2, 3, 4, 5, 2, 3, 4]]  # padding_idx (1) + 1 onwards, per request
