"""LLM.collective_rpc (vLLM's name): a Worker method or fn(worker, ...) on every worker, in rank order."""

import pytest

from anymodel import LLM


@pytest.fixture(scope="module")
def demo():
    return LLM()


def test_callable_gets_each_worker(demo):
    [runner] = demo.collective_rpc(lambda worker, k, scale=1: (type(worker.runner).__name__, k * scale), args=(2,),
                                   kwargs={"scale": 3})
    assert runner == ("ModelRunner", 6)


def test_method_by_name_and_bad_names(demo):
    assert demo.collective_rpc(lambda w: w.device.type) == ["cpu"]
    with pytest.raises(ValueError, match="no method 'nope'"):
        demo.collective_rpc("nope")
    with pytest.raises(ValueError, match="str or a callable"):
        demo.collective_rpc(5)
    with pytest.raises(ValueError, match="timeout"):
        demo.collective_rpc(lambda w: 1, timeout=3.0)
