"""A tiny engine with the real Engine's contract, for the failure paths a real model cannot reach.

Tokens are characters (id = ord). A request continues its prompt's last character through the
alphabet ("ab" -> "cdef..."), one token per step, until max_tokens. A prompt containing "FAIL<k>"
makes step() raise once that request has k tokens ("FAIL" alone: at once); "SLOW" makes each step
sleep 50 ms; "CRASH" makes the tokenizer raise (a bug no handler knows: an unexpected 500).
"""

from __future__ import annotations

import re
import threading
import time

from anymodel.outputs import CompletionOutput, EngineStats, RequestOutput


class CharTokenizer:
    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if "CRASH" in text:
            raise RuntimeError("injected tokenizer crash")
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]

    def apply_chat_template(self, conversation, chat_template=None, add_generation_prompt=True, tokenize=False, **_):
        return "".join(m["content"] for m in conversation) + ("=" if add_generation_prompt else "")

    def __len__(self) -> int:
        return 0x110000


class FakeEngine:
    def __init__(self, max_model_len: int = 64, num_blocks: int = 64, block_size: int = 4):
        self.tokenizer = CharTokenizer()
        self.max_model_len = max_model_len
        self.model_name = "fake"
        self.task = "generate"
        self.num_blocks, self.block_size = num_blocks, block_size
        self.requests: dict[str, dict] = {}
        self.steps = 0
        self.idle_checks = 0  # has_unfinished() calls: stays flat while the loop sleeps
        self.owner: set[int] = set()  # threads that touched the engine: must stay exactly one

    def _touch(self) -> None:
        self.owner.add(threading.get_ident())

    def add_request(self, request_id, prompt, params) -> None:
        self._touch()
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) and "prompt_token_ids" in prompt else None
        text = prompt if isinstance(prompt, str) else prompt.get("prompt") if isinstance(prompt, dict) else None
        ids = ids if ids is not None else self.tokenizer.encode(text)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but max_model_len is {self.max_model_len}")
        text = text if text is not None else self.tokenizer.decode(ids)
        max_tokens = min(params.max_tokens or self.max_model_len, self.max_model_len - len(ids))
        self.requests[request_id] = dict(prompt=text, ids=list(ids), params=params, max_tokens=max_tokens,
                                         out=[[] for _ in range(params.n)])

    def step(self) -> list[RequestOutput]:
        self._touch()
        self.steps += 1
        for r in self.requests.values():
            m = re.search(r"FAIL(\d*)", r["prompt"])
            if m and len(r["out"][0]) >= int(m.group(1) or 0):
                raise RuntimeError("injected failure")
        if any("SLOW" in r["prompt"] for r in self.requests.values()):
            time.sleep(0.05)
        outputs = []
        for rid, r in list(self.requests.items()):
            for i, toks in enumerate(r["out"]):
                last = toks[-1] if toks else r["ids"][-1]
                toks.append(ord("a") + (last - ord("a") + 1 + i) % 26)
            finished = len(r["out"][0]) >= r["max_tokens"]
            outputs.append(self._output(rid, r, finished))
            if finished:
                del self.requests[rid]
        return outputs

    def _output(self, rid: str, r: dict, finished: bool) -> RequestOutput:
        comps = [CompletionOutput(i, self.tokenizer.decode(t), list(t), None, None, "length" if finished else None)
                 for i, t in enumerate(r["out"])]
        return RequestOutput(rid, r["prompt"], r["ids"], comps, finished)

    def abort(self, request_ids) -> None:
        self._touch()
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            self.requests.pop(rid, None)

    def shutdown(self) -> None:  # the real Engine stops its executor's workers; there are none here
        pass

    def has_unfinished(self) -> bool:
        self._touch()
        self.idle_checks += 1
        return bool(self.requests)

    def stats(self) -> EngineStats:
        self._touch()
        used = sum(-(-(len(r["ids"]) + len(r["out"][0])) // self.block_size) * len(r["out"])
                   for r in self.requests.values())
        return EngineStats(num_running=len(self.requests), num_waiting=0,
                           num_free_blocks=self.num_blocks - used, num_total_blocks=self.num_blocks)
