"""use_beam_search (+ length_penalty) on /v1/completions and /v1/chat/completions: the same beams
as the offline LLM.beam_search, as `n` choices; fields beam search would ignore are a 400."""

from __future__ import annotations

import httpx
import pytest

from anymodel import LLM, BeamSearchParams
from anymodel.config import EngineArgs
from tests.models.zoo import build_tiny_model
from tests.server.servers import ThreadedServer

PROMPT = [17, 40, 99, 123, 200, 31]


@pytest.fixture(scope="module")
def beam_server(tmp_path_factory):
    from anymodel.server.app import build_app

    path = build_tiny_model("llama", tmp_path_factory.mktemp("beam-server"))
    app = build_app(EngineArgs(model=str(path), dtype="float32", num_kv_blocks=128, generation_config="vllm"))
    with ThreadedServer(app) as server:
        yield server.url, LLM(str(path), dtype="float32", num_kv_blocks=128, generation_config="vllm")


def post(url, path, **body):
    return httpx.post(f"{url}{path}", json={"model": None, **body}, timeout=60)


def offline_beams(llm, prompt, k, max_tokens, lp):
    out = llm.beam_search([{"prompt_token_ids": prompt}], BeamSearchParams(k, max_tokens, length_penalty=lp))[0]
    return [s.tokens[len(prompt):] for s in out.sequences], out


@pytest.mark.parametrize("lp", [1.0, 0.0])
def test_completions_beam_search_equals_offline(beam_server, lp):
    url, llm = beam_server
    r = post(url, "/v1/completions", prompt=PROMPT, n=3, max_tokens=5, use_beam_search=True, length_penalty=lp,
             temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    want, out = offline_beams(llm, PROMPT, 3, 5, lp)
    tok = llm.get_tokenizer()
    for choice, tokens, seq in zip(body["choices"], want, out.sequences):
        text_tokens = tokens[:-1] if seq.finish_reason == "stop" else tokens  # the EOS is not in the text
        assert choice["text"] == tok.decode(text_tokens)
        assert choice["finish_reason"] == seq.finish_reason
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == len(PROMPT)


def test_chat_beam_search_streams_and_answers(beam_server):
    url, llm = beam_server
    msgs = [{"role": "user", "content": "hello there"}]
    plain = post(url, "/v1/chat/completions", messages=msgs, n=2, max_tokens=4, use_beam_search=True)
    assert plain.status_code == 200, plain.text
    contents = [c["message"]["content"] for c in plain.json()["choices"]]
    assert len(contents) == 2
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": msgs, "n": 2, "max_tokens": 4, "use_beam_search": True, "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    import json

    streamed = {}
    for line in lines:
        for c in json.loads(line[6:])["choices"]:
            streamed[c["index"]] = streamed.get(c["index"], "") + (c["delta"].get("content") or "")
    assert [streamed[i] for i in range(2)] == contents


@pytest.mark.parametrize("body, param", [
    (dict(use_beam_search=True, top_p=0.5), "top_p"),
    (dict(use_beam_search=True, stop=["x"]), "stop"),
    (dict(length_penalty=2.0), "length_penalty"),
    (dict(use_beam_search=True, n=11), "max_logprobs"),
])
def test_beam_search_refusals_are_400(beam_server, body, param):
    url, _ = beam_server
    r = post(url, "/v1/completions", prompt=PROMPT, max_tokens=3, **body)
    assert r.status_code == 400 and param in r.text, r.text
