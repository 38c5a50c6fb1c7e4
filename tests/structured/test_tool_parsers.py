"""Tool-call and reasoning parsers on literal model outputs: whole, and streamed in small pieces
(the pieces put together give the same calls and text)."""

from __future__ import annotations

import json

import pytest

from anymodel.server.reasoning_parsers import get_reasoning_parser
from anymodel.server.tool_parsers import TOOL_PARSERS, get_tool_parser, load_plugin
from anymodel.server.tool_parsers.streaming import StreamingToolCalls

HERMES = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 1, "b": 2}}'
MISTRAL = 'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]'
MISTRAL_V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}'
WANT = [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("name, text, content", [
    ("hermes", HERMES, "Let me check.\n"),
    ("llama3_json", LLAMA3, None),
    ("llama3_json", "<|python_tag|>" + LLAMA3, None),
    ("mistral", MISTRAL, "Sure. "),
    ("mistral", MISTRAL_V11, None),
])
def test_calls_are_extracted(name, text, content):
    found = get_tool_parser(name)().extract(text)
    assert [(c.name, json.loads(c.arguments)) for c in found.calls] == WANT
    assert found.content == content
    assert len({c.id for c in found.calls}) == 2


def test_mistral_ids_are_nine_alphanumerics():
    ids = [c.id for c in get_tool_parser("mistral")().extract(MISTRAL).calls]
    assert all(len(i) == 9 and i.isalnum() for i in ids)


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral"])
@pytest.mark.parametrize("text", ["The capital of France is Paris.", "{not a call}", "<tool_call>{broken"])
def test_text_without_a_valid_call_is_content(name, text):
    found = get_tool_parser(name)().extract(text)
    assert not found.tools_called and found.content == text


def _stream(parser, text: str, size: int = 3):
    stream, content, calls = StreamingToolCalls(parser), "", {}
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    for k, piece in enumerate(pieces):
        got, deltas = stream.feed(piece, finished=k == len(pieces) - 1)
        content += got
        for d in deltas:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id is not None:  # the first delta of a call: id, type and name
                assert entry["id"] is None and d.type == "function" and d.function.name
                entry.update(id=d.id, name=d.function.name)
            else:
                assert entry["id"] is not None  # arguments only after the call's first delta
            entry["arguments"] += d.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("name, text", [("hermes", HERMES), ("llama3_json", LLAMA3), ("mistral", MISTRAL),
                                        ("mistral", MISTRAL_V11)])
def test_streamed_calls_equal_the_whole(name, text):
    parser = get_tool_parser(name)()
    content, calls = _stream(parser, text)
    whole = parser.extract(text)
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == WANT
    assert content == (whole.content or "")


def test_streamed_plain_text_is_all_content_even_with_a_partial_marker():
    content, calls = _stream(get_tool_parser("hermes")(), "a < b and <tool no call")
    assert content == "a < b and <tool no call" and calls == []


def test_plugin_registers_a_parser(tmp_path):
    plugin = tmp_path / "my_parser.py"
    plugin.write_text(
        "from anymodel.server.tool_parsers import ExtractedToolCalls, ToolCall, ToolParser, register_tool_parser\n"
        "@register_tool_parser('arrow')\n"
        "class Arrow(ToolParser):\n"
        "    start = '=>'\n"
        "    def extract(self, text):\n"
        "        if '=>' not in text: return ExtractedToolCalls([], text)\n"
        "        name, args = text.split('=>', 1)[1].split(' ', 1)\n"
        "        return ExtractedToolCalls([ToolCall(name, args)], None)\n")
    load_plugin(str(plugin))
    try:
        found = get_tool_parser("arrow")().extract('=>add {"a": 1}')
        assert found.calls[0].name == "add" and json.loads(found.calls[0].arguments) == {"a": 1}
    finally:
        TOOL_PARSERS.pop("arrow")
    with pytest.raises(ValueError, match="unknown tool call parser 'arrow'"):
        get_tool_parser("arrow")


@pytest.mark.parametrize("name, text, reasoning, content", [
    ("deepseek_r1", "<think>Two plus two.</think>\n\nFour.", "Two plus two.", "Four."),
    ("deepseek_r1", "Two plus two.</think>Four.", "Two plus two.", "Four."),  # <think> was in the prompt
    ("deepseek_r1", "still thinking", "still thinking", None),  # cut inside the reasoning
    ("qwen3", "<think>\nhmm\n</think>\n\nParis.", "\nhmm\n", "Paris."),
    ("qwen3", "Paris.", None, "Paris."),  # enable_thinking=False: no tags
])
def test_reasoning_split_whole_and_streamed(name, text, reasoning, content):
    parser = get_reasoning_parser(name)
    assert parser.split(text) == (reasoning, content)
    stream, got_r, got_c = parser.stream(), "", ""
    pieces = [text[i:i + 2] for i in range(0, len(text), 2)]
    for k, piece in enumerate(pieces):
        r, c = stream.feed(piece, finished=k == len(pieces) - 1)
        got_r, got_c = got_r + r, got_c + c
    assert (got_r or None, got_c or None) == (reasoning, content)


def test_unknown_reasoning_parser():
    with pytest.raises(ValueError, match="available: \\['deepseek_r1', 'qwen3'\\]"):
        get_reasoning_parser("o1")
