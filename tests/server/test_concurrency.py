"""32 concurrent streaming clients, a third of them hanging up mid-stream.

Every completed stream must be right, and afterwards nothing may be left running: no request in
the engine, every KV block free (read from /metrics), every disconnect counted as an abort.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from openai import AsyncOpenAI

from tests.server.servers import metric

NUM_CLIENTS = 32
PROMPT = "12+34="
CHAT = [{"role": "user", "content": "12+34"}]


def aborts(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "request_success_total", finished_reason="abort")


async def finish_stream(client: AsyncOpenAI, i: int, long_kw: dict) -> tuple[str, str]:
    if i % 2:
        stream = await client.chat.completions.create(model="anymodel-demo", messages=CHAT, temperature=0, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]), "chat"
    stream = await client.completions.create(model="anymodel-demo", prompt=PROMPT, stream=True, **long_kw)
    return "".join([c.choices[0].text async for c in stream]), "completion"


async def hang_up(client: AsyncOpenAI, long_kw: dict) -> None:
    stream = await client.completions.create(model="anymodel-demo", prompt=PROMPT, stream=True, **long_kw)
    received = 0
    async for _ in stream:
        received += 1
        if received == 2:
            break
    await stream.close()  # closes the connection: the server must abort the request


async def run_clients(url: str, long_kw: dict) -> list:
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        jobs = [hang_up(client, long_kw) if i % 3 == 0 else finish_stream(client, i, long_kw)
                for i in range(NUM_CLIENTS)]
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=90)


def wait_for_idle_engine(url: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{url}/metrics").text
        busy = metric(text, "num_requests_running") + metric(text, "num_requests_waiting")
        if busy == 0 and metric(text, "num_free_blocks") == metric(text, "num_total_blocks") > 0:
            return text
        assert time.monotonic() < deadline, f"engine not idle after {timeout}s:\n{text}"
        time.sleep(0.1)


def test_32_streams_with_disconnects(demo_server):
    max_len = httpx.get(f"{demo_server}/v1/models").json()["data"][0]["max_model_len"]
    prompt_len = httpx.post(f"{demo_server}/tokenize", json={"prompt": PROMPT}).json()["count"]
    # long enough that a hang-up lands mid-stream: generation runs until the context is full
    long_kw = dict(temperature=0, max_tokens=max_len - prompt_len, extra_body={"ignore_eos": True})
    # references from plain (non-streaming) requests served one at a time
    plain = {k: v for k, v in long_kw.items() if k != "extra_body"} | {"ignore_eos": True}
    reference = {
        "completion": httpx.post(f"{demo_server}/v1/completions", timeout=60, json={"prompt": PROMPT, **plain})
        .json()["choices"][0]["text"],
        "chat": httpx.post(f"{demo_server}/v1/chat/completions", timeout=60, json={"messages": CHAT, "temperature": 0})
        .json()["choices"][0]["message"]["content"],
    }
    aborts_before = aborts(demo_server)

    results = asyncio.run(run_clients(demo_server, long_kw))

    completed = [r for r in results if r is not None]
    assert len(completed) == NUM_CLIENTS - len(range(0, NUM_CLIENTS, 3))
    for text, kind in completed:
        assert text == reference[kind]
    wait_for_idle_engine(demo_server)
    # every hang-up was aborted; a leak would show as unfinished requests or used blocks above
    assert aborts(demo_server) - aborts_before == len(range(0, NUM_CLIENTS, 3))
