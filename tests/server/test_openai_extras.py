"""logit_bias, allowed_token_ids, echo with logprobs, prompt_logprobs and truncate_prompt_tokens over
the OpenAI API: the demo model behind `anymodel serve` (a char-level adder: "12+34=" -> "46", the
tokenizer prepends <s>), driven by the official `openai` client; embeddings on a tiny model."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from anymodel import LLM, SamplingParams
from anymodel.config import EngineArgs
from tests.server.servers import ThreadedServer

CHAT = [{"role": "user", "content": "12+34"}]


def complete(client, prompt, **kw):
    return client.completions.create(model="anymodel-demo", prompt=prompt, **kw)


def chat(client, **kw):
    return client.chat.completions.create(model="anymodel-demo", messages=CHAT, **kw)


def token_id(url: str, char: str) -> int:
    ids = httpx.post(f"{url}/tokenize", json={"prompt": char, "add_special_tokens": False}).json()["tokens"]
    assert len(ids) == 1
    return ids[0]


@pytest.fixture(scope="module")
def offline():
    return LLM()  # the same demo model, in this process


# ---- bad_words / best_of (issue 18) -------------------------------------------------------------------
def test_bad_words_ban_the_greedy_answer(openai_client):
    assert complete(openai_client, "12+34=", temperature=0, max_tokens=2).choices[0].text == "46"
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=2, extra_body={"bad_words": ["46"]})
    assert not r.choices[0].text.startswith("46")
    c = chat(openai_client, temperature=0, max_tokens=2, extra_body={"bad_words": ["4"]})
    assert "4" not in c.choices[0].message.content


def test_best_of_returns_n_choices_like_offline(openai_client, offline):
    kw = dict(temperature=1.5, seed=3, max_tokens=3)
    r = complete(openai_client, "12+34=", n=2, best_of=4, extra_body={"ignore_eos": True}, **kw)
    want = offline.generate(["12+34="], SamplingParams(n=2, best_of=4, ignore_eos=True, **kw), use_tqdm=False)[0]
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [c.text for c in want.outputs]
    with pytest.raises(openai.BadRequestError, match="best_of"):
        complete(openai_client, "12+34=", n=1, best_of=2, stream=True, **kw)


# ---- logit_bias / allowed_token_ids -----------------------------------------------------------------
def test_logit_bias_makes_greedy_pick_the_token(openai_client, demo_server):
    nine = str(token_id(demo_server, "9"))
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=3, logit_bias={nine: 100})
    assert r.choices[0].text == "999"
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=3, logit_bias={nine: 250})  # clamped to 100
    assert r.choices[0].text == "999"
    c = chat(openai_client, temperature=0, max_tokens=2, logit_bias={nine: 100})
    assert c.choices[0].message.content == "99"


def test_negative_logit_bias_bans_the_greedy_token(openai_client, demo_server):
    four = str(token_id(demo_server, "4"))
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=1, logit_bias={four: -100})
    assert r.choices[0].text != "4"  # the unbiased answer starts with "4"


def test_allowed_token_ids_restrict_the_output(openai_client, demo_server):
    allowed = {token_id(demo_server, c): c for c in "17"}
    r = complete(openai_client, "12+34=", temperature=1.0, seed=5, max_tokens=12,
                 extra_body={"allowed_token_ids": list(allowed), "ignore_eos": True})
    assert len(r.choices[0].text) == 12 and set(r.choices[0].text) <= set(allowed.values())


@pytest.mark.parametrize("bias, words", [({"x": 5}, ["logit_bias", "'x'"]), ({"999": 5}, ["logit_bias", "[0, 16)"])])
def test_bad_logit_bias_is_a_400(openai_client, bias, words):
    with pytest.raises(openai.BadRequestError) as e:
        complete(openai_client, "1+1=", logit_bias=bias)
    assert all(w in e.value.body["message"] for w in words), e.value.body
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        chat(openai_client, logit_bias=bias)


# ---- echo + logprobs, prompt_logprobs ---------------------------------------------------------------
def test_echo_with_logprobs_covers_prompt_then_completion(openai_client, offline):
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=3, logprobs=2, echo=True)
    choice, usage = r.choices[0], r.usage
    ref = offline.generate("12+34=", SamplingParams(temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=2),
                           use_tqdm=False)[0]
    assert choice.text == "12+34=" + ref.outputs[0].text
    lp = choice.logprobs
    n_prompt = usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + usage.completion_tokens
    assert lp.tokens[:n_prompt] == ["<s>", "1", "2", "+", "3", "4", "="]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i, token_id_ in enumerate(ref.prompt_token_ids[1:], start=1):  # the engine's prompt_logprobs
        assert math.isclose(lp.token_logprobs[i], ref.prompt_logprobs[i][token_id_].logprob, abs_tol=1e-5)
        assert 1 <= len(lp.top_logprobs[i]) <= 3
    for j, token_id_ in enumerate(ref.outputs[0].token_ids):
        assert math.isclose(lp.token_logprobs[n_prompt + j], ref.outputs[0].logprobs[j][token_id_].logprob,
                            abs_tol=1e-5)
    # text_offset indexes the echoed text; <s> is not in it and sits at 0
    assert lp.text_offset[:n_prompt] == [0, 0, 1, 2, 3, 4, 5]
    for token, at in zip(lp.tokens[1:], lp.text_offset[1:]):
        assert token == "</s>" or choice.text[at:at + len(token)] == token  # EOS: skipped in the text
    # vLLM's extra field: the raw prompt logprobs, keyed by token id
    extra = choice.model_extra["prompt_logprobs"]
    assert extra[0] is None and len(extra) == n_prompt
    assert {int(t) for t in extra[1]} >= {ref.prompt_token_ids[1]}


def test_echo_with_max_tokens_zero_scores_the_prompt_only(openai_client):
    r = complete(openai_client, ["12+34=", "5+5="], max_tokens=0, logprobs=1, echo=True)
    assert [c.text for c in r.choices] == ["12+34=", "5+5="]
    assert [len(c.logprobs.tokens) for c in r.choices] == [7, 5]
    assert r.usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        complete(openai_client, "12+34=", max_tokens=0)


def test_streamed_echo_with_logprobs_matches_plain(openai_client):
    kw = dict(temperature=0, max_tokens=4, logprobs=1, echo=True, n=1)
    plain = complete(openai_client, ["12+34=", "7+8="], **kw)
    chunks = [c.choices[0] for c in complete(openai_client, ["12+34=", "7+8="], stream=True, **kw) if c.choices]
    for index, want in enumerate(plain.choices):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in mine) == want.text
        assert sum((c.logprobs.tokens for c in mine), []) == want.logprobs.tokens
        assert sum((c.logprobs.text_offset for c in mine), []) == want.logprobs.text_offset
        got = sum((c.logprobs.token_logprobs for c in mine), [])
        assert got[0] is None and got[1:] == pytest.approx(want.logprobs.token_logprobs[1:])


def test_prompt_logprobs_extra_field(openai_client, offline):
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=2, extra_body={"prompt_logprobs": 1})
    ref = offline.generate("12+34=", SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1),
                           use_tqdm=False)[0].prompt_logprobs
    got = r.choices[0].model_extra["prompt_logprobs"]
    assert r.choices[0].logprobs is None and got[0] is None
    for mine, want in zip(got[1:], ref[1:]):
        assert {int(t): v["rank"] for t, v in mine.items()} == {t: lp.rank for t, lp in want.items()}
        assert [v["logprob"] for v in mine.values()] == pytest.approx([lp.logprob for lp in want.values()], abs=1e-5)
    c = chat(openai_client, temperature=0, extra_body={"prompt_logprobs": 0})
    assert c.model_extra["prompt_logprobs"][0] is None
    assert len(c.model_extra["prompt_logprobs"]) == c.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        complete(openai_client, "12+34=", stream=True, extra_body={"prompt_logprobs": 1})
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        complete(openai_client, "12+34=", extra_body={"prompt_logprobs": 21})


# ---- truncate_prompt_tokens -------------------------------------------------------------------------
def test_truncated_completion_equals_the_truncated_prompt(openai_client, demo_server):
    max_len = httpx.get(f"{demo_server}/v1/models").json()["data"][0]["max_model_len"]
    prompt = "1" * (max_len + 5) + "12+34="
    ids = httpx.post(f"{demo_server}/tokenize", json={"prompt": prompt}).json()["tokens"]
    kw = dict(temperature=0, max_tokens=4)
    cut = complete(openai_client, prompt, extra_body={"truncate_prompt_tokens": 8}, **kw)
    direct = complete(openai_client, ids[:1] + ids[-7:], **kw)  # the BOS the tokenizer added stays (as in vLLM)
    assert cut.choices[0].text == direct.choices[0].text and cut.usage.prompt_tokens == 8
    echoed = complete(openai_client, prompt, echo=True, extra_body={"truncate_prompt_tokens": 8}, **kw)
    assert echoed.choices[0].text == "112+34=" + direct.choices[0].text  # the prompt text the model saw
    longest = complete(openai_client, prompt, extra_body={"truncate_prompt_tokens": -1}, temperature=0, max_tokens=1)
    assert longest.usage.prompt_tokens == max_len - 1
    c = chat(openai_client, temperature=0, extra_body={"truncate_prompt_tokens": 6})
    assert c.usage.prompt_tokens == 6


@pytest.mark.parametrize("value, words", [(0, ["truncate_prompt_tokens", "-1"]), (10_000, ["truncate_prompt_tokens"])])
def test_bad_truncation_is_a_400(openai_client, value, words):
    with pytest.raises(openai.BadRequestError) as e:
        complete(openai_client, "12+34=", extra_body={"truncate_prompt_tokens": value})
    assert all(w in e.value.body["message"] for w in words), e.value.body


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    from anymodel.server.app import build_app
    from tests.models.zoo import build_tiny_model

    path = build_tiny_model("llama", tmp_path_factory.mktemp("embed"))
    app = build_app(EngineArgs(model=str(path), task="embed", dtype="float32", num_kv_blocks=64))
    with ThreadedServer(app) as server:
        yield server.url


def test_embeddings_truncation(embed_server):
    ids = list(range(40, 60))

    def embed(body):
        r = httpx.post(f"{embed_server}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    cut = embed({"input": ids, "truncate_prompt_tokens": 5})
    direct = embed({"input": ids[-5:]})
    assert cut["usage"]["prompt_tokens"] == 5
    assert cut["data"][0]["embedding"] == pytest.approx(direct["data"][0]["embedding"], abs=1e-5)
    pooled = httpx.post(f"{embed_server}/pooling", json={"input": ids, "truncate_prompt_tokens": 5}, timeout=30)
    assert pooled.status_code == 200 and pooled.json()["usage"]["prompt_tokens"] == 5
    bad = httpx.post(f"{embed_server}/v1/embeddings", json={"input": ids, "truncate_prompt_tokens": 0}, timeout=30)
    assert bad.status_code == 400 and "truncate_prompt_tokens" in bad.json()["error"]["message"]
