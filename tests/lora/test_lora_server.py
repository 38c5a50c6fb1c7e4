"""The server with LoRA adapters (openai client): --lora-modules names, /v1/models, `model="name"`
picks the adapter on completions and chat, and runtime load / unload when
ANYMODEL_ALLOW_RUNTIME_LORA_UPDATING=1 (without it those routes are 404, as vLLM)."""

import os

import httpx
import openai
import pytest

from anymodel import LLM, LoRARequest, SamplingParams
from anymodel.config import EngineArgs
from anymodel.server.app import build_app
from anymodel.server.cli import build_parser
from anymodel.server.lora_models import RUNTIME_UPDATING_ENV, LoRAModulePath
from tests.lora.peft_adapters import make_adapter
from tests.models.zoo import build_tiny_model, mixed_prompts
from tests.server.servers import ThreadedServer

PROMPT_LEN, N_TOKENS = 16, 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-server")
    base = build_tiny_model("llama", root / "base")
    dirs = [make_adapter(base, root / f"a{i}", ["q_proj", "v_proj", "down_proj"], r=4, seed=i) for i in range(3)]
    args = EngineArgs(model=str(base), dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=8,
                      served_model_name="base")
    os.environ[RUNTIME_UPDATING_ENV] = "1"
    try:
        app = build_app(args, lora_modules=[LoRAModulePath("a0", str(dirs[0])),
                                            LoRAModulePath("a1", str(dirs[1]), "base")])
    finally:
        del os.environ[RUNTIME_UPDATING_ENV]
    prompt = mixed_prompts(base, n=4, seed=2)[3]  # 16 tokens
    llm = LLM(str(base), dtype="float32", enable_lora=True, max_loras=3, max_lora_rank=8)
    sp = SamplingParams(temperature=0, max_tokens=N_TOKENS, ignore_eos=True)
    texts = [o.outputs[0].text for o in llm.generate(
        [{"prompt_token_ids": prompt}] * 4, sp, use_tqdm=False,
        lora_request=[None] + [LoRARequest(f"a{i}", i + 1, str(d)) for i, d in enumerate(dirs)])]
    assert len(set(texts)) == 4  # each adapter answers differently: the checks below can tell them apart
    with ThreadedServer(app) as server:
        yield server.url, dirs, prompt, dict(zip(["base", "a0", "a1", "a2"], texts))


def _client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x")


def _complete(client, model, prompt):
    return client.completions.create(model=model, prompt=prompt, max_tokens=N_TOKENS, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text


def test_models_lists_adapters_with_parent_and_root(setup):
    url, dirs, _, _ = setup
    cards = {m.id: m for m in _client(url).models.list().data}
    assert list(cards)[:3] == ["base", "a0", "a1"]
    assert (cards["a0"].parent, cards["a0"].root) == ("base", str(dirs[0]))
    assert cards["base"].model_extra.get("parent") is None


def test_model_name_picks_the_adapter(setup):
    url, _, prompt, texts = setup
    client = _client(url)
    for name in ("base", "a0", "a1"):
        assert _complete(client, name, prompt) == texts[name]
    chat = client.chat.completions.create(model="a1", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError, match="a9"):
        _complete(client, "a9", prompt)
    assert httpx.post(f"{url}/tokenize", json={"model": "a0", "prompt": "hi"}).status_code == 200


def test_runtime_load_and_unload(setup):
    url, dirs, prompt, texts = setup
    load = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": str(dirs[2])})
    assert load.status_code == 200, load.text
    assert _complete(_client(url), "a2", prompt) == texts["a2"]
    again = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": str(dirs[2])})
    assert again.status_code == 400 and "already been loaded" in again.text
    bad = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": "/no/such/dir"})
    assert bad.status_code == 400 and "does not exist" in bad.text
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 200
    assert "a2" not in [m.id for m in _client(url).models.list().data]
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        _complete(_client(url), "a2", prompt)


def test_runtime_updating_needs_the_variable():
    from tests.server.fake_engine import FakeEngine

    engine = FakeEngine()
    with ThreadedServer(build_app(EngineArgs(enable_lora=True), engine=engine)) as server:
        assert httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}).status_code == 404


def test_cli_lora_flags():
    ns = build_parser().parse_args(["serve", "m", "--enable-lora", "--max-loras", "3", "--max-lora-rank", "32",
                                    "--lora-modules", "a=/p/a", '{"name": "b", "path": "/p/b", "base_model_name": "m"}'])
    assert ns.lora_modules == [LoRAModulePath("a", "/p/a"), LoRAModulePath("b", "/p/b", "m")]
    assert (ns.enable_lora, ns.max_loras, ns.max_lora_rank) == (True, 3, 32)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m", "--lora-modules", "no-equals-sign"])
    with pytest.raises(ValueError, match="--lora-modules needs --enable-lora"):
        build_app(EngineArgs(), lora_modules=[LoRAModulePath("a", "/p/a")])
