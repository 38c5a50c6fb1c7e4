"""task="auto" from the architecture, explicit tasks checked against it, and clear errors for
requests a model cannot answer."""

import json

import pytest
import transformers

from anymodel import LLM, PoolingParams, SamplingParams
from anymodel.pooling.tasks import resolve_task, sentence_transformers_pooling
from tests.models.zoo import cached_model
from tests.pooling.conftest import KV
from tests.pooling.encoders import cached_encoder


def _config(model_type: str, arch: str, **kwargs):
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    config.architectures = [arch]
    return config


@pytest.mark.parametrize("model_type, arch, kwargs, task", [
    ("bert", "BertForSequenceClassification", {"num_labels": 1}, "score"),  # a cross-encoder
    ("xlm-roberta", "XLMRobertaForSequenceClassification", {"num_labels": 1}, "score"),
    ("bert", "BertForSequenceClassification", {"num_labels": 3}, "classify"),
    ("llama", "LlamaForSequenceClassification", {"num_labels": 1}, "classify"),  # a decoder: not a cross-encoder
    ("jamba", "JambaForSequenceClassification", {"num_labels": 1}, "classify"),
    ("llama", "LlamaForCausalLM", {}, "generate"),
    ("gpt2", "GPT2LMHeadModel", {}, "generate"),
    ("bert", "BertModel", {}, "embed"),
    ("roberta", "RobertaForMaskedLM", {}, "embed"),
    ("llama", "LlamaModel", {}, "embed"),
    ("gemma2", "Gemma2Model", {}, "embed"),
    ("bert", "BertForTokenClassification", {}, "reward"),
    ("qwen2", "Qwen2ForRewardModel", {}, "reward"),
])
def test_auto_task_from_architecture(model_type, arch, kwargs, task, tmp_path):
    assert resolve_task("auto", _config(model_type, arch, **kwargs), tmp_path) == task


def test_custom_code_defaults_to_generate(tmp_path):
    config = _config("llama", "MyModel")
    config.auto_map = {"AutoModel": "modeling_my.MyModel"}
    assert resolve_task("auto", config, tmp_path) == "generate"
    assert resolve_task("embed", config, tmp_path) == "embed"  # nothing known against it


def test_explicit_task_must_fit_the_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"task 'generate' is not supported by architecture "
                                         r"'BertForSequenceClassification'; supported: \['score', 'classify', 'embed'\]"):
        resolve_task("generate", _config("bert", "BertForSequenceClassification", num_labels=1), tmp_path)
    with pytest.raises(ValueError, match=r"task 'score'.*supported: \['classify', 'embed'\]"):
        resolve_task("score", _config("bert", "BertForSequenceClassification", num_labels=3), tmp_path)


def test_classify_needs_a_trained_head():
    with pytest.raises(ValueError, match="no trained head"):
        LLM(str(cached_model("llama")), task="classify", **KV)


def test_sentence_transformers_files(tmp_path):
    assert sentence_transformers_pooling(tmp_path) == {}
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert sentence_transformers_pooling(tmp_path) == {"pooling_type": "CLS", "normalize": False}


@pytest.fixture(scope="module")
def bert_scorer():
    return LLM(str(cached_encoder("bert", "BertForSequenceClassification", num_labels=1)), **KV)


def test_generation_request_to_a_pooling_model(bert_scorer):
    with pytest.raises(ValueError, match="task 'score': generation requests are not supported"):
        bert_scorer.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)


def test_pooling_request_to_a_generate_model():
    llm = LLM(str(cached_model("llama")), **KV)
    with pytest.raises(ValueError, match="need a pooling model; this model runs task 'generate'"):
        llm.embed("hello", use_tqdm=False)
    with pytest.raises(ValueError, match="need a pooling model"):
        llm.encode("hello", use_tqdm=False)


def test_request_kind_must_fit_the_task(bert_scorer):
    with pytest.raises(ValueError, match=r"a 'embed' request is not supported by a model running task 'score'"):
        bert_scorer.embed("hello", use_tqdm=False)
    with pytest.raises(ValueError, match=r"unsupported pooling_task 'translate'"):
        bert_scorer.encode("hello", pooling_task="translate", use_tqdm=False)
    with pytest.raises(ValueError, match="dimensions is only supported for embeddings"):
        bert_scorer.encode("hello", PoolingParams(dimensions=4), use_tqdm=False, pooling_task="encode")


def test_prompt_longer_than_the_context(bert_scorer):
    n = bert_scorer.engine.max_model_len + 1
    with pytest.raises(ValueError, match=rf"\(length {n}\) is longer than the maximum model length"):
        bert_scorer.encode({"prompt_token_ids": [5] * n}, use_tqdm=False, pooling_task="score")
    assert not bert_scorer.engine.has_unfinished()


@pytest.mark.parametrize("override, match", [
    ({"pooling": "MEAN"}, r"unknown key\(s\) \['pooling'\]; supported: \["),
    ({"pooling_type": "MAX"}, r"unsupported pooling_type 'MAX'; supported: \['LAST', 'ALL', 'CLS', 'STEP', 'MEAN'\]"),
])
def test_bad_pooler_overrides(override, match):
    path = cached_encoder("bert", "BertModel")
    with pytest.raises(ValueError, match=match):
        LLM(str(path), override_pooler_config=override, **KV)


def test_cli_flag_reaches_engine_args():
    from anymodel.server.cli import build_parser, engine_args_from

    ns = build_parser().parse_args(["serve", "m", "--task", "reward", "--override-pooler-config",
                                    '{"pooling_type": "STEP", "step_tag_id": 123, "returned_token_ids": [456, 789]}'])
    args = engine_args_from(ns)
    assert args.task == "reward"
    assert args.override_pooler_config == {"pooling_type": "STEP", "step_tag_id": 123, "returned_token_ids": [456, 789]}
