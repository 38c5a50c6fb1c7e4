"""Nothing is silently ignored: a field OpenAI or vLLM define that anymodel does not implement is a
400 naming it, unless its value asks for nothing; a field nobody defines is ignored with a warning."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from anymodel.server import request_fields
from anymodel.server.pooling_protocol import EmbeddingRequest, RerankRequest
from anymodel.server.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from anymodel.server.request_fields import FieldError
from tests.server.test_errors import assert_error

CHAT = [{"role": "user", "content": "12+34"}]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


def test_openai_client_auto_tools_need_a_tool_parser(openai_client):
    """tools with tool_choice "auto" (their default) on a server without --enable-auto-tool-choice: 400."""
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model="anymodel-demo", messages=CHAT, tools=[TOOL])
    assert e.value.body["param"] == "tool_choice" and "--enable-auto-tool-choice" in e.value.body["message"]


def test_openai_client_suffix_is_refused(openai_client):
    with pytest.raises(openai.BadRequestError, match="suffix"):
        openai_client.completions.create(model="anymodel-demo", prompt="1+1=", suffix="!")


@pytest.mark.parametrize("path, field, value", [
    ("/v1/chat/completions", "functions", [{"name": "add"}]),
    ("/v1/chat/completions", "function_call", {"name": "add"}),
    ("/v1/chat/completions", "chat_template", "{{ 1 }}"),
    ("/v1/chat/completions", "reasoning_effort", "low"),
    ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
    ("/v1/chat/completions", "modalities", ["text", "audio"]),
    ("/v1/chat/completions", "prediction", {"type": "content", "content": "46"}),
    ("/v1/chat/completions", "service_tier", "flex"),
    ("/v1/chat/completions", "store", True),
    ("/v1/chat/completions", "metadata", {"k": "v"}),
    ("/v1/chat/completions", "documents", [{"text": "x"}]),
    ("/v1/chat/completions", "mm_processor_kwargs", {"size": 3}),
    ("/v1/chat/completions", "kv_transfer_params", {"do_remote_decode": True}),
    ("/v1/chat/completions", "guided_whitespace_pattern", r"\s*"),
    ("/v1/completions", "suffix", "!"),
    ("/v1/completions", "logits_processors", ["my_module.MyProcessor"]),
    ("/classify", "messages", CHAT),
    ("/pooling", "mm_processor_kwargs", {"a": 1}),
    ("/tokenize", "chat_template", "{{ 1 }}"),
])
def test_unimplemented_field_is_400_naming_it(demo_server, path, field, value):
    base = {"/v1/chat/completions": {"messages": CHAT}, "/v1/completions": {"prompt": "1+1="},
            "/score": {"text_1": "a", "text_2": "b"}, "/rerank": {"query": "a", "documents": ["b"]},
            "/tokenize": {"prompt": "1"}}.get(path, {"input": "a"})
    r = httpx.post(f"{demo_server}{path}", json={**base, field: value}, timeout=30)
    error = assert_error(r, 400, f"`{field}`")
    assert error["param"] == field


CHAT_DEFAULTS = dict(tools=[], tool_choice="none", functions=[], function_call="none", parallel_tool_calls=True,
                     response_format={"type": "text"}, stream_options=None, user="u1", n=1, store=False,
                     service_tier="auto", metadata=None, logprobs=False, top_logprobs=None, echo=False,
                     use_beam_search=False, modalities=["text"], priority=0, return_tokens_as_token_ids=False,
                     add_special_tokens=False, documents=None, chat_template=None, seed=None)
COMPLETION_DEFAULTS = dict(echo=False, logprobs=None, suffix=None, best_of=1, n=1, stream_options=None, user="u1",
                           response_format={"type": "text"}, use_beam_search=False, add_special_tokens=True,
                           priority=0, store=False, service_tier="auto")


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": CHAT, **CHAT_DEFAULTS}),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "auto"}),
    ("/v1/completions", {"prompt": "12+34=", **COMPLETION_DEFAULTS}),
    ("/v1/completions", {"prompt": "12+34=", "suffix": "", "best_of": 2, "n": 2}),
])
def test_defaults_that_ask_for_nothing_are_accepted(demo_server, path, body):
    r = httpx.post(f"{demo_server}{path}", json={**body, "temperature": 0, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text


def test_openai_client_with_defaults_spelled_out(openai_client):
    r = openai_client.chat.completions.create(
        model="anymodel-demo", messages=CHAT, temperature=0, max_tokens=4, tools=[], tool_choice="none",
        parallel_tool_calls=False, response_format={"type": "text"}, store=False, service_tier="auto", user="me",
        stream_options=None, n=1)
    assert r.choices[0].message.content == "46"


def test_unknown_field_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="anymodel.server"):
        req = CompletionRequest.model_validate({"prompt": "x", "my_extension": 1, "other": 2})
    assert req.prompt == "x"
    assert "my_extension" in caplog.text and "other" in caplog.text


def test_unknown_field_over_http_is_a_200(demo_server):
    r = httpx.post(f"{demo_server}/v1/completions", json={"prompt": "12+34=", "temperature": 0, "nonsense": 1},
                   timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "46"


@pytest.mark.parametrize("model, table", [
    (CompletionRequest, request_fields.COMPLETION), (ChatCompletionRequest, request_fields.CHAT),
    (TokenizeRequest, request_fields.TOKENIZE), (EmbeddingRequest, request_fields.EMBEDDING),
    (RerankRequest, request_fields.POOLING),
])
def test_every_request_kind_has_its_table_and_no_row_shadows_a_field(model, table):
    assert model.unsupported is table
    assert not set(table) & set(model.model_fields), "a field is both implemented and in the table"


def test_a_row_refuses_only_what_asks_for_something():
    row = request_fields.Unsupported("x", (None, False, 0))
    assert row.accepts("f", {"f": False}) and row.accepts("f", {"f": 0}) and row.accepts("f", {"f": None})
    assert not row.accepts("f", {"f": True}) and not row.accepts("f", {"f": 1}) and not row.accepts("f", {"f": 0.0})
    with pytest.raises(FieldError) as e:
        ChatCompletionRequest.model_validate({"messages": CHAT, "guided_whitespace_pattern": r"\s*"})
    assert e.value.param == "guided_whitespace_pattern"


def test_tokenize_takes_the_template_fields(demo_server):
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    body = {"messages": messages, "add_generation_prompt": False, "continue_final_message": True,
            "chat_template_kwargs": {"enable_thinking": False}}
    r = httpx.post(f"{demo_server}/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    with_special = httpx.post(f"{demo_server}/tokenize", json={**body, "add_special_tokens": True}, timeout=30)
    assert with_special.json()["count"] >= r.json()["count"]


def test_null_means_the_default(demo_server):
    """OpenAI's optional fields are nullable: a client that sends every field, null where unset, is served."""
    nulls = dict(n=None, temperature=None, top_p=None, presence_penalty=None, frequency_penalty=None, stop=None,
                 stream=None, logprobs=None, top_logprobs=None, seed=None, user=None, tools=None, tool_choice=None,
                 response_format=None, max_tokens=None, max_completion_tokens=None, logit_bias=None)
    r = httpx.post(f"{demo_server}/v1/chat/completions", json={"messages": CHAT, **nulls}, timeout=30)
    assert r.status_code == 200, r.text
    body = {"prompt": "12+34=", **{k: v for k, v in nulls.items() if "completion_tokens" not in k}, "echo": None,
            "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{demo_server}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "46", r.text
    assert_error(httpx.post(f"{demo_server}/v1/completions", json={"prompt": None}, timeout=30), 400, "prompt")
