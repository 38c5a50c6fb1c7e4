"""DeltaTracker: cumulative engine outputs -> deltas; held-back text around stop strings; merging."""

from __future__ import annotations

from anymodel.outputs import CompletionOutput, Logprob, RequestOutput
from anymodel.server.delta import DeltaTracker


def out(text: str, ids: list[int], finish: str | None = None, logprobs=None) -> RequestOutput:
    comp = CompletionOutput(0, text, ids, None, logprobs, finish)
    return RequestOutput("r", "p", [1, 2], [comp], finish is not None)


def test_deltas_concatenate_to_the_final_output():
    tracker = DeltaTracker()
    lps = [{5: Logprob(-0.1)}, {6: Logprob(-0.2)}, {7: Logprob(-0.3)}]
    steps = [out("a", [5], logprobs=lps[:1]), out("ab", [5, 6], logprobs=lps[:2]),
             out("abc", [5, 6, 7], "length", logprobs=lps)]
    deltas = [tracker.delta(o) for o in steps]
    assert [d.samples[0].text for d in deltas] == ["a", "b", "c"]
    merged = deltas[0]
    for d in deltas[1:]:
        merged.merge(d)
    s = merged.samples[0]
    assert (s.text, s.token_ids, s.logprobs, s.finish_reason, merged.finished) == ("abc", [5, 6, 7], lps, "length", True)
    assert merged.prompt_token_ids == [1, 2]


def test_deltas_do_not_alias_engine_lists():
    tracker = DeltaTracker()
    ids = [5]
    d = tracker.delta(out("a", ids))
    ids.append(6)  # the engine keeps appending to its own list
    assert d.samples[0].token_ids == [5]


def test_text_is_held_back_while_a_stop_string_may_be_forming():
    # stop "XYZ": the engine showed "abXY" then cut the text to "ab" when "Z" arrived
    tracker = DeltaTracker.for_stops(["XYZ"])
    texts = [tracker.delta(o).samples.get(0) for o in
             (out("abX", [1]), out("abXY", [1, 2]), out("ab", [1, 2, 3], "stop"))]
    sent = "".join(s.text for s in texts if s is not None)
    assert sent == "ab"


def test_held_back_text_is_released_at_the_end():
    tracker = DeltaTracker.for_stops(["STOP"])
    first = tracker.delta(out("hello", [1]))
    last = tracker.delta(out("hello!", [1, 2], "length"))
    assert first.samples[0].text + last.samples[0].text == "hello!"
