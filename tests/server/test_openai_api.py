"""The demo model behind `anymodel serve`, driven by the official `openai` client.

The demo is a char-level addition model: "12+34=" -> "46"; its chat template renders user
content "12+34" as "12+34=".
"""

from __future__ import annotations

import httpx
import pytest

from anymodel import LLM, SamplingParams


def complete(client, prompt: str, **kw):
    return client.completions.create(model="anymodel-demo", prompt=prompt, **kw)


def test_models_list(openai_client):
    models = openai_client.models.list().data
    assert [m.id for m in models] == ["anymodel-demo"]
    assert models[0].max_model_len > 0


def test_greedy_completion(openai_client, demo_server):
    r = complete(openai_client, "12+34=", temperature=0, max_tokens=8)
    assert r.choices[0].text == "46" and r.choices[0].finish_reason == "stop"
    prompt_len = httpx.post(f"{demo_server}/tokenize", json={"prompt": "12+34="}).json()["count"]
    assert r.usage.prompt_tokens == prompt_len
    assert r.usage.completion_tokens >= 2 and r.usage.total_tokens == prompt_len + r.usage.completion_tokens


def test_greedy_text_equals_offline_llm_generate(openai_client):
    prompts = ["12+34=", "999+1=", "5+5=", "123+456="]
    offline = LLM().generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    served = complete(openai_client, prompts, temperature=0, max_tokens=12)
    assert [c.text for c in served.choices] == [o.outputs[0].text for o in offline]


def test_chat(openai_client):
    r = openai_client.chat.completions.create(model="anymodel-demo", temperature=0,
                                              messages=[{"role": "user", "content": "12+34"}])
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "46" and r.choices[0].finish_reason == "stop"


def test_streaming_chat_with_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model="anymodel-demo", temperature=0, messages=[{"role": "user", "content": "12+34"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "46"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 2


def test_streaming_completion_matches_plain_completion(openai_client):
    kw = dict(temperature=0, max_tokens=20, extra_body={"ignore_eos": True})
    plain = complete(openai_client, "77+88=", **kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in complete(openai_client, "77+88=", stream=True, **kw))
    assert streamed == plain and len(plain) > 0


def test_n_samples(openai_client):
    r = complete(openai_client, "12+34=", n=2, temperature=1.0, seed=1, max_tokens=6)
    assert sorted(c.index for c in r.choices) == [0, 1]
    chat = openai_client.chat.completions.create(model="anymodel-demo", n=2, temperature=0,
                                                 messages=[{"role": "user", "content": "12+34"}])
    assert [c.message.content for c in chat.choices] == ["46", "46"]


def test_stop_string(openai_client):
    assert complete(openai_client, "123+456=", temperature=0).choices[0].text == "579"
    r = complete(openai_client, "123+456=", temperature=0, stop=["7"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == ("5", "stop")
    assert r.choices[0].model_extra.get("stop_reason") == "7"  # vLLM's extra field
    assert complete(openai_client, "123+456=", temperature=0, stop="79").choices[0].text == "5"
    # "79" spans two tokens: "7" must not leak into the stream before "9" reveals the stop string
    streamed = "".join(c.choices[0].text for c in complete(openai_client, "123+456=", temperature=0, stop="79",
                                                                 stream=True))
    assert streamed == "5"


def test_seeded_sampling_reproduces(openai_client):
    kw = dict(temperature=1.0, max_tokens=16, extra_body={"ignore_eos": True})
    runs = [complete(openai_client, "12+34=", seed=seed, **kw).choices[0].text for seed in (7, 7, 8, 9)]
    assert runs[0] == runs[1]
    assert len(set(runs)) > 1  # the seed matters


def test_completion_logprobs(openai_client):
    r = complete(openai_client, "12+34=", temperature=0, logprobs=2, max_tokens=4)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs) and all(1 <= len(t) <= 3 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_chat_logprobs(openai_client):
    r = openai_client.chat.completions.create(model="anymodel-demo", temperature=0, logprobs=True, top_logprobs=3,
                                              messages=[{"role": "user", "content": "12+34"}])
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content).startswith("46")
    assert all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy: the best one was sampled


def test_tokenize_detokenize_round_trip(demo_server):
    tok = httpx.post(f"{demo_server}/tokenize", json={"prompt": "12+34="}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    text = httpx.post(f"{demo_server}/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert "12+34=" in text
    chat = httpx.post(f"{demo_server}/tokenize", json={"messages": [{"role": "user", "content": "12+34"}]}).json()
    assert httpx.post(f"{demo_server}/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"].endswith("12+34=")


def test_health_and_metrics(demo_server):
    assert httpx.get(f"{demo_server}/health").status_code == 200
    text = httpx.get(f"{demo_server}/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_free_blocks",
                 "num_total_blocks", "prompt_tokens_total", "generation_tokens_total", "num_preemptions_total",
                 "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket"):
        assert f"anymodel:{name}" in text


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_client_sees_openai_errors(openai_client, endpoint):
    import openai

    with pytest.raises(openai.BadRequestError, match="temperature"):
        if endpoint == "completions":
            complete(openai_client, "1+1=", temperature=-2)
        else:
            openai_client.chat.completions.create(model="anymodel-demo", temperature=-2,
                                                  messages=[{"role": "user", "content": "1+1"}])
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="gpt-5", prompt="1+1=")
