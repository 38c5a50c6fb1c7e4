"""/v1/completions `prompt_embeds` (vLLM's: base64 of torch.save(tensor [T, hidden]) bytes), only
with --enable-prompt-embeds: the tokens of the same prompt as token ids, through the real HTTP server."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import torch

from anymodel.config import EngineArgs
from anymodel.prompt_embeds import encode_base64_embeds
from anymodel.server import cli
from anymodel.server.app import build_app
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.runtime.test_prompt_embeds import hf_lookup
from tests.server.servers import ThreadedServer
from tests.server.test_errors import assert_error


@pytest.fixture(scope="module")
def embeds_server(tmp_path_factory):
    path = build_tiny_model("llama", tmp_path_factory.mktemp("llama"))
    prompts = mixed_prompts(path, n=2, seed=5)
    args = EngineArgs(str(path), dtype="float32", enable_prompt_embeds=True, max_num_batched_tokens=8)
    with ThreadedServer(build_app(args)) as server:
        yield server.url, prompts, [hf_lookup(path, ids) for ids in prompts]


def _complete(url: str, **fields) -> httpx.Response:
    body = {"max_tokens": 5, "temperature": 0, "ignore_eos": True, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_embeds_complete_as_their_token_ids(embeds_server):
    url, prompts, embeds = embeds_server
    by_ids = _complete(url, prompt=prompts, return_token_ids=True).json()
    r = _complete(url, prompt_embeds=[encode_base64_embeds(e) for e in embeds], return_token_ids=True)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [c["token_ids"] for c in got["choices"]] == [c["token_ids"] for c in by_ids["choices"]]
    assert [c["text"] for c in got["choices"]] == [c["text"] for c in by_ids["choices"]]
    assert got["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)
    # one string, beside a `prompt`: the embeddings come first (vLLM's order)
    both = _complete(url, prompt_embeds=encode_base64_embeds(embeds[1]), prompt=prompts[0], return_token_ids=True)
    assert [c["token_ids"] for c in both.json()["choices"]] == [c["token_ids"] for c in by_ids["choices"]][::-1]
    # SageMaker's /invocations routes a prompt_embeds body to completions
    body = {"prompt_embeds": encode_base64_embeds(embeds[0]), "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    routed = httpx.post(f"{url}/invocations", json=body, timeout=60)
    assert routed.json()["choices"][0]["text"] == by_ids["choices"][0]["text"]


def test_embeds_stream(embeds_server):
    url, prompts, embeds = embeds_server
    expected = _complete(url, prompt=prompts[0]).json()["choices"][0]["text"]
    body = {"prompt_embeds": encode_base64_embeds(embeds[0]), "max_tokens": 5, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(json.loads(x)["choices"][0]["text"] for x in lines) == expected


def test_bad_embeds_are_400_naming_the_field(embeds_server):
    url, prompts, embeds = embeds_server
    hidden = embeds[0].shape[1]
    assert_error(_complete(url, prompt_embeds="not base64!"), 400, "prompt_embeds")
    assert_error(_complete(url, prompt_embeds=base64.b64encode(b"junk").decode()), 400, "prompt_embeds")
    assert_error(_complete(url, prompt_embeds=encode_base64_embeds(torch.zeros(3, hidden + 1))), 400,
                 "prompt_embeds", f"hidden_size={hidden}")
    assert_error(_complete(url, prompt_embeds=encode_base64_embeds(torch.full((2, hidden), float("inf")))), 400,
                 "prompt_embeds", "non-finite")
    assert_error(_complete(url, prompt_embeds=encode_base64_embeds({"a": torch.zeros(1)})), 400, "torch.Tensor")
    assert_error(_complete(url, prompt_embeds=encode_base64_embeds(embeds[0]), echo=True), 400, "echo")
    assert_error(_complete(url), 400, "prompt")
    assert _complete(url, prompt=prompts[0]).status_code == 200  # the server goes on


def test_without_the_flag_400_names_it(demo_server):
    r = httpx.post(f"{demo_server}/v1/completions", timeout=60,
                   json={"prompt_embeds": encode_base64_embeds(torch.zeros(2, 4)), "max_tokens": 2})
    assert_error(r, 400, "--enable-prompt-embeds")


def test_cli_flag():
    ns = cli.build_parser().parse_args(["serve", "m", "--enable-prompt-embeds"])
    assert cli.engine_args_from(ns).enable_prompt_embeds is True
