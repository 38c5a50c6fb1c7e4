"""TokenizerThread: prompts are tokenized and chat templates rendered on one worker thread, with a
tokenizer copy of its own, so that the event loop keeps answering (/health, streams in flight)
while a large request is being prepared.

One thread, because a Rust-backed tokenizer is not re-entrant; its own copy, because the event loop
keeps decoding with the handlers' tokenizer (logprob token strings, echoes) at the same time.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class TokenizerThread:
    def __init__(self, tokenizer: Any):
        try:
            self.tokenizer = copy.deepcopy(tokenizer)
        except Exception:  # a tokenizer that cannot be copied is only ever used on this thread then
            self.tokenizer = tokenizer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anymodel-tokenizer")

    async def run(self, fn: Callable, *args: Any) -> Any:
        """fn(tokenizer, *args) on the tokenizer thread; its exception is raised here."""
        return await self.call(fn, self.tokenizer, *args)

    async def call(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on the tokenizer thread (fn uses this thread's tokenizer itself)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
