import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a local tokenizer, built once per session."""
    from tests.models.zoo import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir):
    from anymodel import LLM

    return LLM(str(tiny_model_dir), dtype="float32")
