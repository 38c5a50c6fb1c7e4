"""The pooling endpoints on a real server (uvicorn on a free port): the official openai client for
/v1/embeddings, raw HTTP for /score, /rerank, /classify, /pooling."""

import base64

import httpx
import numpy as np
import pytest
import torch

from anymodel.config import EngineArgs
from tests.pooling.conftest import KV, sentences
from tests.pooling.encoders import cached_encoder
from tests.pooling.test_cross_encoder import PAIRS, hf_logits
from tests.server.servers import ThreadedServer, client_for


@pytest.fixture(scope="module")
def embed_server(minilm_dir, minilm_llm):
    from anymodel.server.app import build_app

    app = build_app(EngineArgs(model=str(minilm_dir), task="embed"), engine=minilm_llm.engine)
    with ThreadedServer(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def score_server():
    from anymodel.server.app import build_app

    path = cached_encoder("bert", "BertForSequenceClassification", num_labels=1)
    with ThreadedServer(build_app(EngineArgs(model=str(path), **KV))) as server:
        yield server.url, path


@pytest.fixture(scope="module")
def client(embed_server):
    with client_for(embed_server) as c:
        yield c


def _model(url: str) -> str:
    return httpx.get(f"{url}/v1/models").json()["data"][0]["id"]


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])  # None: the client's default (base64)
def test_openai_embeddings_match_sentence_transformers(client, embed_server, sentence_model, encoding_format):
    texts = sentences(12)
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    resp = client.embeddings.create(model=_model(embed_server), input=texts, **kwargs)
    rows = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    if encoding_format == "base64":  # asked for explicitly, the client hands the string back as is
        rows = [np.frombuffer(base64.b64decode(r), dtype="<f4").copy() for r in rows]
    ours = torch.tensor(np.array(rows))
    ref = sentence_model.encode(texts, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, ref, dim=-1).min() >= 0.9999
    assert resp.usage.prompt_tokens == sum(len(sentence_model.tokenizer(t)["input_ids"]) for t in texts)


def test_base64_is_little_endian_float32(embed_server):
    body = httpx.post(f"{embed_server}/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    plain = httpx.post(f"{embed_server}/v1/embeddings", json={"input": "hello"}).json()["data"][0]["embedding"]
    assert vec.shape == (384,) and np.allclose(vec, plain)
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"


def test_embedding_errors(client, embed_server):
    import openai

    with pytest.raises(openai.BadRequestError, match="Matryoshka"):
        client.embeddings.create(model=_model(embed_server), input="hi", dimensions=8)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")
    r = httpx.post(f"{embed_server}/v1/embeddings", json={"input": []})
    assert r.status_code == 400 and "input must not be empty" in r.json()["error"]["message"]


def test_pooling_and_cosine_score_on_an_embedder(embed_server, sentence_model):
    body = httpx.post(f"{embed_server}/pooling", json={"input": ["a b", "c"]}).json()
    assert [len(d["data"]) for d in body["data"]] == [384, 384]
    body = httpx.post(f"{embed_server}/score", json={"text_1": "A man is eating pasta.",
                                                     "text_2": ["A man is eating food.", "A monkey plays drums."]}).json()
    ref = sentence_model.similarity(sentence_model.encode(["A man is eating pasta."]),
                                    sentence_model.encode(["A man is eating food.", "A monkey plays drums."]))[0]
    assert [d["score"] for d in body["data"]] == pytest.approx(ref.tolist(), abs=1e-4)


def test_cross_encoder_score(score_server):
    url, path = score_server
    ref = torch.sigmoid(hf_logits(path, "BertForSequenceClassification", PAIRS)[:, 0]).tolist()
    body = httpx.post(f"{url}/score", json={"text_1": [a for a, _ in PAIRS], "text_2": [b for _, b in PAIRS]}).json()
    assert [d["index"] for d in body["data"]] == list(range(len(PAIRS)))
    assert [d["score"] for d in body["data"]] == pytest.approx(ref, abs=1e-4)
    assert body["usage"]["prompt_tokens"] > 0


def test_rerank_sorts_by_relevance_and_honours_top_n(score_server):
    url, path = score_server
    query, docs = PAIRS[0][0], [b for _, b in PAIRS]
    ref = torch.sigmoid(hf_logits(path, "BertForSequenceClassification", [(query, d) for d in docs])[:, 0]).tolist()
    body = httpx.post(f"{url}/rerank", json={"query": query, "documents": docs, "top_n": 2}).json()
    best = sorted(range(len(docs)), key=lambda i: -ref[i])[:2]
    assert [r["index"] for r in body["results"]] == best
    assert [r["document"]["text"] for r in body["results"]] == [docs[i] for i in best]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([ref[i] for i in best], abs=1e-4)
    assert len(httpx.post(f"{url}/v1/rerank", json={"query": query, "documents": docs}).json()["results"]) == 4


def test_classify_endpoint_and_wrong_kind(score_server):
    url, _ = score_server
    body = httpx.post(f"{url}/classify", json={"input": ["hello world", "paris"]}).json()
    assert [d["num_classes"] for d in body["data"]] == [1, 1] and body["data"][0]["label"] == "LABEL_0"
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "hello"})
    assert r.status_code == 400 and "'embed' request is not supported" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/health").status_code == 200  # the engine keeps serving


def test_pooling_requests_show_in_metrics(client, embed_server):
    from tests.server.servers import metric

    before = httpx.get(f"{embed_server}/metrics").text
    resp = client.embeddings.create(model=_model(embed_server), input=["A man is eating food.", "ok"],
                                    encoding_format="float")
    after = httpx.get(f"{embed_server}/metrics").text
    assert metric(after, "prompt_tokens_total") - metric(before, "prompt_tokens_total") == resp.usage.prompt_tokens
    done = {"finished_reason": "stop"}
    assert metric(after, "request_success_total", **done) - metric(before, "request_success_total", **done) == 2
    assert metric(after, "e2e_request_latency_seconds_count") - metric(before, "e2e_request_latency_seconds_count") == 2


def test_invocations_routes_input_to_embeddings(embed_server):
    body = {"model": _model(embed_server), "input": ["A man is eating food."]}
    via = httpx.post(f"{embed_server}/invocations", json=body, timeout=60).json()
    direct = httpx.post(f"{embed_server}/v1/embeddings", json=body, timeout=60).json()
    assert via["object"] == "list" and via["data"][0]["embedding"] == direct["data"][0]["embedding"]


def test_chat_style_embeddings(minilm_dir, minilm_llm):
    """vLLM's /v1/embeddings with `messages`: rendered by the served chat template, embedded as one input."""
    from anymodel.server.app import build_app

    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    app = build_app(EngineArgs(model=str(minilm_dir), task="embed", chat_template=template), engine=minilm_llm.engine)
    messages = [{"role": "user", "content": "A man is eating food."}, {"role": "assistant", "content": "Yes."}]
    text = "user: A man is eating food.\nassistant: Yes.\n"
    with ThreadedServer(app) as server:
        def embed(**body) -> list[float]:
            return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60).json()["data"][0]["embedding"]

        # the template writes no [CLS]/[SEP]; add_special_tokens puts the tokenizer's on top (as `input` gets them)
        assert embed(messages=messages, add_special_tokens=True) == pytest.approx(embed(input=text), abs=1e-5)
        assert embed(messages=messages) == pytest.approx(embed(input=text, add_special_tokens=False), abs=1e-5)
        assert embed(messages=messages) != pytest.approx(embed(input=text), abs=1e-3)
        both = httpx.post(f"{server.url}/v1/embeddings", json={"messages": messages, "input": "x"}, timeout=60)
    assert both.status_code == 400 and "exactly one of `input` or `messages`" in both.json()["error"]["message"]


def test_activation_switch_per_request(score_server, embed_server):
    """use_activation (and its older name activation) per request: raw logits without the sigmoid."""
    url, path = score_server
    logits = hf_logits(path, "BertForSequenceClassification", PAIRS)[:, 0].tolist()
    pairs = {"text_1": [a for a, _ in PAIRS], "text_2": [b for _, b in PAIRS]}
    for switch in ({"use_activation": False}, {"activation": False}):
        raw = httpx.post(f"{url}/score", json={**pairs, **switch}).json()
        assert [d["score"] for d in raw["data"]] == pytest.approx(logits, abs=1e-4)
    ranked = httpx.post(f"{url}/rerank", json={"query": PAIRS[0][0], "documents": [PAIRS[0][1]],
                                               "use_activation": False}).json()
    assert ranked["results"][0]["relevance_score"] == pytest.approx(logits[0], abs=1e-4)
    probs = httpx.post(f"{url}/classify", json={"input": "paris", "use_activation": True}).json()["data"][0]["probs"]
    raw = httpx.post(f"{url}/classify", json={"input": "paris", "use_activation": False}).json()["data"][0]["probs"]
    assert probs == pytest.approx(torch.sigmoid(torch.tensor(raw)).tolist(), abs=1e-5)
    clash = httpx.post(f"{url}/score", json={**pairs, "use_activation": True, "activation": False})
    assert clash.status_code == 400 and "use_activation" in clash.json()["error"]["message"]
    by_cosine = httpx.post(f"{embed_server}/score", json={"text_1": "a", "text_2": "b", "use_activation": False})
    assert by_cosine.status_code == 400 and "embedding cosine" in by_cosine.json()["error"]["message"]


def test_empty_inputs_are_400(score_server):
    url, _ = score_server
    # (an empty string is a prompt: the tokenizer's [CLS] [SEP], as in vLLM)
    for path, body in (("/classify", {"input": []}), ("/rerank", {"query": "q", "documents": []}),
                       ("/score", {"text_1": [], "text_2": []})):
        response = httpx.post(f"{url}{path}", json=body)
        assert response.status_code == 400, (path, body, response.text)


def test_pooling_priority_and_request_ids(embed_server, score_server):
    """A pooling request's priority (a 400 under fcfs, as vLLM) and its id: X-Request-Id, else the body's request_id."""
    body = {"model": _model(embed_server), "input": "A man is eating food."}
    refused = httpx.post(f"{embed_server}/v1/embeddings", json={**body, "priority": 1})
    assert refused.status_code == 400 and "Priority scheduling is not enabled" in refused.json()["error"]["message"]
    assert httpx.post(f"{embed_server}/v1/embeddings", json={**body, "priority": 0}).status_code == 200
    assert httpx.post(f"{embed_server}/v1/embeddings", json={**body, "request_id": "e1"}).json()["id"] == "embd-e1"
    url, _ = score_server
    named = httpx.post(f"{url}/rerank", headers={"X-Request-Id": "hdr"},
                       json={"query": "q", "documents": ["a", "b"], "request_id": "body"}).json()
    assert named["id"] == "rerank-hdr"
    assert httpx.post(f"{url}/score", json={"text_1": "a", "text_2": "b", "request_id": "s"}).json()["id"] == "score-s"
    assert httpx.post(f"{url}/classify", json={"input": "a", "request_id": "c"}).json()["id"] == "classify-c"
