"""Tools over HTTP with the openai client: tool_choice required / named enforced by a grammar on a
random model (every call valid against its tool's parameters), auto with the hermes / mistral /
llama3_json parsers, streaming tool-call deltas as OpenAI sends them, tools in the chat template,
and the reasoning split (scripted replies)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from anymodel.config import EngineArgs
from anymodel.server.app import build_app
from anymodel.server.chat_output import ChatOptions
from tests.models.zoo import build_tiny_model
from tests.server.servers import ThreadedServer, client_for
from tests.structured.scripted_engine import ScriptedEngine

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Berlin"]},
                                                           "days": {"type": "integer"}},
                          "required": ["city"], "additionalProperties": False}}}
FLAG = {"type": "function", "function": {"name": "set_flag",
        "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"],
                       "additionalProperties": False}}}
TOOLS = [WEATHER, FLAG]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
# lists the tools, so that a test can see them in the prompt
TEMPLATE = ("{% for t in tools or [] %}[tool {{ t.function.name }}]{% endfor %}"
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>\n")
HERMES_CALL = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Berlin)"\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_tiny_model("llama", tmp_path_factory.mktemp("tools-server"))
    args = EngineArgs(model=str(path), dtype="float32", chat_template=TEMPLATE,
                      structured_outputs_config={"disable_any_whitespace": True})
    app = build_app(args, chat_options=ChatOptions(enable_auto_tool_choice=True, tool_call_parser="hermes"))
    with ThreadedServer(app) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as c:
        yield c


def _valid(call) -> bool:
    try:
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def test_named_tool_choice_is_always_a_valid_call(client):
    r = client.chat.completions.create(model=None, messages=MSG, tools=TOOLS, n=4, temperature=1.0, seed=0,
                                       max_tokens=48, tool_choice={"type": "function", "function": {"name": "set_flag"}})
    done = [c for c in r.choices if c.finish_reason == "tool_calls"]
    assert done
    for c in done:
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-") and call.function.name == "set_flag"
        assert _valid(call) and c.message.content is None


def test_required_tool_choice_calls_only_given_tools_with_valid_arguments(client):
    r = client.chat.completions.create(model=None, messages=MSG, tools=TOOLS, tool_choice="required", n=6,
                                       temperature=1.0, seed=1, max_tokens=96, parallel_tool_calls=False)
    done = [c for c in r.choices if c.finish_reason == "tool_calls"]
    assert done, [c.finish_reason for c in r.choices]
    assert all(len(c.message.tool_calls) == 1 and _valid(c.message.tool_calls[0]) for c in done)


def _collect_stream(stream):
    """The streamed choice put together as the openai SDK users do: content, and calls by index."""
    content, calls, finish, first_deltas = "", {}, None, []
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            if d.index not in calls:
                first_deltas.append(d)
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            calls[d.index]["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert all(d.id and d.type == "function" and d.function.name for d in first_deltas)
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_calls_equal_the_non_streamed_ones(client, tool_choice):
    kwargs = dict(model=None, messages=MSG, tools=TOOLS, tool_choice=tool_choice, temperature=0, max_tokens=96)
    whole = client.chat.completions.create(**kwargs).choices[0]
    content, calls, finish = _collect_stream(client.chat.completions.create(stream=True, **kwargs))
    assert finish == whole.finish_reason == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
        [(t.function.name, json.loads(t.function.arguments)) for t in whole.message.tool_calls]
    assert content == ""


def test_auto_with_the_hermes_parser(client):
    """The output is forced (guided_regex) into hermes' format: the parser turns it into a call."""
    kwargs = dict(model=None, messages=MSG, tools=TOOLS, temperature=0, max_tokens=200,
                  extra_body={"guided_regex": HERMES_CALL})
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    (call,) = whole.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Berlin")
    content, calls, finish = _collect_stream(client.chat.completions.create(stream=True, **kwargs))
    assert finish == "tool_calls" and content == "" and calls[0]["arguments"] == call.function.arguments


def test_auto_without_a_call_is_plain_content(client):
    r = client.chat.completions.create(model=None, messages=MSG, tools=TOOLS, temperature=0, max_tokens=8)
    assert r.choices[0].message.tool_calls in (None, []) and r.choices[0].finish_reason == "length"


def test_tool_choice_none_still_shows_tools_to_the_template(server):
    body = {"messages": MSG, "tools": TOOLS}
    ids = httpx.post(f"{server}/tokenize", json=body, timeout=30).json()["tokens"]
    text = httpx.post(f"{server}/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]
    assert "[tool get_weather][tool set_flag]" in text
    r = httpx.post(f"{server}/v1/chat/completions", json={**body, "tool_choice": "none", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"] == []


@pytest.mark.parametrize("body, param, message", [
    ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not in"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "cannot be combined"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, None, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, None, "tool_choice"),
])
def test_bad_tool_requests_are_400(server, body, param, message):
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": MSG, "max_tokens": 4, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    if param:
        assert r.json()["error"]["param"] == param


def test_offline_chat_passes_tools_to_the_template(tmp_path):
    from anymodel import LLM, SamplingParams

    llm = LLM(str(build_tiny_model("llama", tmp_path)), dtype="float32", chat_template=TEMPLATE)
    out = llm.chat(MSG, SamplingParams(max_tokens=2), tools=TOOLS, use_tqdm=False)[0]
    assert out.prompt.startswith("[tool get_weather][tool set_flag]")


# ------------------------------------------------------------------ scripted replies: parsers end to end
SCRIPTS = {
    "mistral": 'Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Berlin"}}]',
    "llama3": '{"name": "set_flag", "parameters": {"on": true}}',
    "think": "<think>The user asks about Paris.</think>\n\nIt is sunny.",
    "think-long": "<think>hmm " + "x" * 40 + "</think>Done.",
}


def _scripted(options: ChatOptions):
    return ThreadedServer(build_app(engine=ScriptedEngine(SCRIPTS), chat_options=options))


@pytest.mark.parametrize("parser, prompt, content, call", [
    ("mistral", "mistral", "Checking. ", ("get_weather", {"city": "Berlin"})),
    ("llama3_json", "llama3", "", ("set_flag", {"on": True})),
])
def test_scripted_auto_parsers_stream_and_whole(parser, prompt, content, call):
    with _scripted(ChatOptions(enable_auto_tool_choice=True, tool_call_parser=parser)) as srv, \
            client_for(srv.url) as c:
        kwargs = dict(model=None, messages=[{"role": "user", "content": prompt}], tools=TOOLS)
        whole = c.chat.completions.create(**kwargs).choices[0]
        assert whole.finish_reason == "tool_calls" and (whole.message.content or "") == content
        got = [(t.function.name, json.loads(t.function.arguments)) for t in whole.message.tool_calls]
        assert got == [call]
        s_content, s_calls, finish = _collect_stream(c.chat.completions.create(stream=True, **kwargs))
        assert (s_content, finish) == (content, "tool_calls")
        assert [(x["name"], json.loads(x["arguments"])) for x in s_calls] == [call]


def test_reasoning_content_whole_and_streamed():
    with _scripted(ChatOptions(reasoning_parser="deepseek_r1")) as srv, client_for(srv.url) as c:
        msg = c.chat.completions.create(model=None, messages=[{"role": "user", "content": "think"}]).choices[0].message
        assert msg.reasoning_content == "The user asks about Paris." and msg.content == "It is sunny."
        reasoning = content = ""
        for chunk in c.chat.completions.create(model=None, messages=[{"role": "user", "content": "think-long"}],
                                               stream=True):
            delta = chunk.choices[0].delta if chunk.choices else None
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += (delta.content or "") if delta else ""
        assert reasoning == "hmm " + "x" * 40 and content == "Done."
        with pytest.raises(openai.BadRequestError, match="reasoning"):
            c.chat.completions.create(model=None, messages=[{"role": "user", "content": "think"}],
                                      response_format={"type": "json_object"})


def test_reasoning_parser_reaches_the_engine_config():
    """--reasoning-parser makes the engine start grammars after </think>; an engine built without it
    (passed to build_app) makes the server refuse constrained requests instead (the 400 above)."""
    options = ChatOptions(reasoning_parser="qwen3")
    args = options.engine_args(EngineArgs())
    assert args.structured_outputs_config.reasoning_parser == "qwen3"

    class Built:
        pass

    engine = Built()
    engine.args = args
    assert options.for_engine(engine).grammar_after_reasoning
    assert not options.for_engine(ScriptedEngine({})).grammar_after_reasoning
    with pytest.raises(ValueError, match="reasoning_parser"):
        EngineArgs(structured_outputs_config={"reasoning_parser": "o1"})
