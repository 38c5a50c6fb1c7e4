"""vLLM's return_token_ids and return_tokens_as_token_ids on completions and chat, streamed or not:
the ids are the ones the tokenizer and the engine used, and add up across chunks."""

from __future__ import annotations

import json

import httpx
import pytest

CHAT = [{"role": "user", "content": "12+34"}]


def _post(url: str, path: str, **fields) -> httpx.Response:
    body = {"max_tokens": 4, "temperature": 0, "ignore_eos": True, **fields}
    body = ({"messages": CHAT} if "chat" in path else {"prompt": "12+34="}) | body
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def _stream(url: str, path: str, **fields) -> list[dict]:
    text = _post(url, path, stream=True, **fields).text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_return_token_ids(demo_server, path):
    body = _post(demo_server, path, return_token_ids=True).json()
    choice = body["choices"][0]
    prompt_ids = choice["prompt_token_ids"] if "chat" not in path else body["prompt_token_ids"]
    assert len(choice["token_ids"]) == 4 and len(prompt_ids) == body["usage"]["prompt_tokens"]
    text = choice["text"] if "chat" not in path else choice["message"]["content"]
    decoded = httpx.post(f"{demo_server}/detokenize", json={"tokens": choice["token_ids"]}).json()["prompt"]
    assert text and decoded.startswith(text)  # the text leaves out special tokens (EOS, with ignore_eos)
    if "chat" not in path:
        assert prompt_ids == httpx.post(f"{demo_server}/tokenize", json={"prompt": "12+34="}).json()["tokens"]
    chunks = _stream(demo_server, path, return_token_ids=True)
    streamed = [t for c in chunks for ch in c["choices"] for t in (ch.get("token_ids") or [])]
    sent_prompts = [c.get("prompt_token_ids") or ch.get("prompt_token_ids") for c in chunks for ch in c["choices"]
                    if c.get("prompt_token_ids") or ch.get("prompt_token_ids")]
    assert streamed == choice["token_ids"] and sent_prompts == [prompt_ids]
    plain = _post(demo_server, path).json()  # not asked: the fields stay null
    assert plain.get("prompt_token_ids") is None
    assert all(c.get(k) is None for c in plain["choices"] for k in ("token_ids", "prompt_token_ids"))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_tokens_as_token_ids(demo_server, path):
    logprobs = {"logprobs": 2} if "chat" not in path else {"logprobs": True, "top_logprobs": 2}
    plain = _post(demo_server, path, **logprobs).json()["choices"][0]
    body = _post(demo_server, path, return_tokens_as_token_ids=True, return_token_ids=True, **logprobs).json()
    choice = body["choices"][0]
    if "chat" in path:
        tokens = [e["token"] for e in choice["logprobs"]["content"]]
        tops = [t["token"] for e in choice["logprobs"]["content"] for t in e["top_logprobs"]]
    else:
        tokens = choice["logprobs"]["tokens"]
        tops = [k for entry in choice["logprobs"]["top_logprobs"] for k in entry]
        assert choice["logprobs"]["text_offset"] == plain["logprobs"]["text_offset"]  # offsets still count text
    assert tokens == [f"token_id:{t}" for t in choice["token_ids"]]
    assert tops and all(t.startswith("token_id:") for t in tops)


def test_add_special_tokens(demo_server):
    """Completions add the tokenizer's special tokens unless told not to; chat only when told to."""
    plain = _post(demo_server, "/v1/completions", return_token_ids=True).json()["choices"][0]["prompt_token_ids"]
    bare = _post(demo_server, "/v1/completions", return_token_ids=True,
                 add_special_tokens=False).json()["choices"][0]["prompt_token_ids"]
    tokenized = httpx.post(f"{demo_server}/tokenize", json={"prompt": "12+34=", "add_special_tokens": False}).json()
    assert bare == tokenized["tokens"] and len(plain) > len(bare)
    chat = _post(demo_server, "/v1/chat/completions", return_token_ids=True).json()["prompt_token_ids"]
    chat_special = _post(demo_server, "/v1/chat/completions", return_token_ids=True,
                         add_special_tokens=True).json()["prompt_token_ids"]
    assert len(chat_special) > len(chat) and chat_special[-len(chat):] == chat


def test_chat_echo_continues_the_last_message(demo_server):
    messages = [*CHAT, {"role": "assistant", "content": "4"}]
    fields = dict(messages=messages, add_generation_prompt=False, continue_final_message=True)
    plain = httpx.post(f"{demo_server}/v1/chat/completions", timeout=60,
                       json={"max_tokens": 2, "temperature": 0, **fields}).json()
    echoed = httpx.post(f"{demo_server}/v1/chat/completions", timeout=60,
                        json={"max_tokens": 2, "temperature": 0, "echo": True, **fields}).json()
    assert echoed["choices"][0]["message"]["content"] == "4" + plain["choices"][0]["message"]["content"]
    chunks = _stream(demo_server, "/v1/chat/completions", max_tokens=2, echo=True, **fields)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == echoed["choices"][0]["message"]["content"]
    # with a generation prompt the reply's role (assistant) is not the last message's (user): nothing to echo
    content = [_post(demo_server, "/v1/chat/completions", **extra).json()["choices"][0]["message"]["content"]
               for extra in ({"echo": True}, {})]
    assert content[0] == content[1]
