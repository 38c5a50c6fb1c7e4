"""FakeEngine (tests/server/fake_engine.py) that answers each chat prompt with a scripted reply,
a few characters per step, ending with `stop`: tool-call and reasoning formats no random model writes."""

from __future__ import annotations

from anymodel.outputs import CompletionOutput, RequestOutput
from tests.server.fake_engine import FakeEngine

CHARS_PER_STEP = 3


class ScriptedEngine(FakeEngine):
    def __init__(self, scripts: dict[str, str]):
        super().__init__(max_model_len=4096)
        self.scripts = scripts  # chat message content -> reply

    def step(self) -> list[RequestOutput]:
        self._touch()
        outputs = []
        for rid, r in list(self.requests.items()):
            reply = self.scripts[r["prompt"].rstrip("=")]
            for toks in r["out"]:
                toks.extend(ord(c) for c in reply[len(toks):len(toks) + CHARS_PER_STEP])
            finished = len(r["out"][0]) >= len(reply)
            comps = [CompletionOutput(i, self.tokenizer.decode(t), list(t), None, None, "stop" if finished else None)
                     for i, t in enumerate(r["out"])]
            outputs.append(RequestOutput(rid, r["prompt"], r["ids"], comps, finished))
            if finished:
                del self.requests[rid]
        return outputs
