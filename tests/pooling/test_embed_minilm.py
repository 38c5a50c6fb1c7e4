"""Real weights: all-MiniLM-L6-v2 through LLM(task="embed") against sentence-transformers itself."""

import pytest
import torch

from anymodel import PoolingParams
from tests.pooling.conftest import sentences


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a).float(), torch.as_tensor(b).float(), dim=-1)


def test_pooler_read_from_sentence_transformers_files(minilm_llm):
    from anymodel.adapters.pooler import PoolingType

    (config,) = minilm_llm.apply_model(lambda m: m.pooler.config)
    assert config.pooling_type is PoolingType.MEAN and config.normalize  # 1_Pooling + Normalize module
    assert minilm_llm.engine.max_model_len == 256  # sentence_bert_config.json max_seq_length
    assert minilm_llm.apply_model(lambda m: type(m).__name__) == ["TransformersForEmbedding"]


def test_embeddings_match_sentence_transformers(minilm_llm, sentence_model):
    texts = sentences(56)
    steps = []
    engine = minilm_llm.engine
    step = engine.step
    engine.step = lambda: steps.append(1) or step()
    try:
        outs = minilm_llm.embed(texts, use_tqdm=False)
    finally:
        del engine.step
    ref = sentence_model.encode(texts, convert_to_tensor=True)
    ours = torch.tensor([o.outputs.embedding for o in outs])
    assert ours.shape == ref.shape == (56, 384)
    assert _cos(ours, ref).min() >= 0.9999
    assert len(steps) <= 3  # many prompts per step, not one by one
    assert [o.prompt_token_ids for o in outs] == [sentence_model.tokenizer(t)["input_ids"] for t in texts]
    assert engine.kv.num_free_blocks == engine.kv.pool.num_blocks  # KV blocks freed right away


def test_score_is_cosine_of_embeddings(minilm_llm, sentence_model):
    query, docs = "A man is eating pasta.", ["A man is eating food.", "A monkey is playing drums."]
    outs = minilm_llm.score(query, docs, use_tqdm=False)
    ref = sentence_model.similarity(sentence_model.encode([query]), sentence_model.encode(docs))[0]
    assert [o.outputs.score for o in outs] == pytest.approx(ref.tolist(), abs=1e-4)
    assert outs[0].outputs.score > outs[1].outputs.score


def test_matryoshka_dimensions_truncate_and_renormalise(minilm_dir, sentence_model):
    from anymodel import LLM

    llm = LLM(str(minilm_dir), task="embed", num_kv_blocks=64, hf_overrides={"matryoshka_dimensions": [64, 128]})
    (out,) = llm.embed("A man is eating food.", PoolingParams(dimensions=64), use_tqdm=False)
    full = sentence_model.encode(["A man is eating food."], convert_to_tensor=True)[0]
    assert len(out.outputs.embedding) == 64
    assert torch.tensor(out.outputs.embedding).norm().item() == pytest.approx(1.0, abs=1e-5)
    assert _cos(out.outputs.embedding, full[:64]).item() >= 0.9999
    with pytest.raises(ValueError, match="dimensions must be one of"):
        llm.embed("x", PoolingParams(dimensions=100), use_tqdm=False)


def test_dimensions_rejected_without_matryoshka(minilm_llm):
    with pytest.raises(ValueError, match="Matryoshka"):
        minilm_llm.embed("hello", PoolingParams(dimensions=32), use_tqdm=False)


def test_cls_override_and_no_normalize(minilm_dir, sentence_model):
    from anymodel import LLM

    llm = LLM(str(minilm_dir), task="embed", num_kv_blocks=64,
              override_pooler_config={"pooling_type": "CLS", "normalize": False})
    (out,) = llm.embed("The girl is carrying a baby.", use_tqdm=False)
    ref = sentence_model[0].auto_model(**sentence_model.tokenize(["The girl is carrying a baby."])).last_hidden_state
    assert torch.allclose(torch.tensor(out.outputs.embedding), ref[0, 0].detach(), atol=1e-4)


def test_text_truncation_keeps_cls_and_sep(minilm_llm):
    """truncate_prompt_tokens on text cuts the words, not BERT's [CLS]/[SEP] (a tokenizer
    truncating on the left does the same): the embedding is that of the kept words."""
    from anymodel.engine.inputs import special_affixes

    tok = minilm_llm.get_tokenizer()
    assert special_affixes(tok) == ([tok.cls_token_id], [tok.sep_token_id])
    text = "one two three four five six seven eight"
    cut = minilm_llm.embed([text], use_tqdm=False, truncate_prompt_tokens=5)[0]
    ids = tok.encode(text)
    assert cut.prompt_token_ids == ids[:1] + ids[-4:-1] + ids[-1:]
    direct = minilm_llm.embed([{"prompt_token_ids": ids[:1] + ids[-4:]}], use_tqdm=False)[0]
    assert cut.outputs.embedding == direct.outputs.embedding


def _with_dense_modules(minilm_dir, folder, dense_modules):
    """A copy of MiniLM (weights linked) whose modules.json puts sentence-transformers Dense modules
    between Pooling and Normalize, saved by sentence-transformers itself."""
    import json
    import os

    for f in os.listdir(minilm_dir):
        (folder / f).symlink_to(os.path.join(minilm_dir, f))
    (folder / "modules.json").unlink()
    modules = json.loads((minilm_dir / "modules.json").read_text())
    normalize = modules.pop()
    for i, dense in enumerate(dense_modules):
        path = f"{2 + i}_Dense"
        (folder / path).mkdir()
        dense.save(str(folder / path))
        modules.append({"idx": 2 + i, "name": str(2 + i), "path": path, "type": "sentence_transformers.models.Dense"})
    normalize.update(idx=len(modules), name=str(len(modules)))
    (folder / "modules.json").write_text(json.dumps(modules + [normalize]))
    return folder


def test_dense_modules_match_sentence_transformers(minilm_dir, tmp_path):
    """Dense projections (LaBSE / distiluse / stella style) run after pooling, before normalising:
    a residual ReLU layer then a tanh projection 384 -> 32, as sentence-transformers computes them."""
    from pathlib import Path

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    from anymodel import LLM

    torch.manual_seed(0)
    dense = [Dense(384, 384, activation_function=torch.nn.ReLU(), use_residual=True), Dense(384, 32, bias=False)]
    folder = _with_dense_modules(Path(minilm_dir), tmp_path, dense)
    texts = sentences(6)
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    llm = LLM(str(folder), task="embed", num_kv_blocks=64, dtype="float32")
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    assert ours.shape == ref.shape == (6, 32)
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-4)
    assert llm.engine.embedding_size == 32  # Matryoshka `dimensions` are checked against the Dense output
    with pytest.raises(ValueError, match="Matryoshka"):
        llm.embed("x", PoolingParams(dimensions=16), use_tqdm=False)
    # the documented switch, as the error message says (not a poke at the engine's config)
    llm = LLM(str(folder), task="embed", num_kv_blocks=64, dtype="float32", hf_overrides={"is_matryoshka": True})
    assert len(llm.embed("x", PoolingParams(dimensions=16), use_tqdm=False)[0].outputs.embedding) == 16
    with pytest.raises(ValueError, match=r"dimensions must be <= 32 \(the embedding size\)"):
        llm.embed("x", PoolingParams(dimensions=100), use_tqdm=False)


def test_dense_module_with_untrusted_activation_is_refused(minilm_dir, tmp_path):
    import json
    from pathlib import Path

    from sentence_transformers.models import Dense

    from anymodel import LLM

    folder = _with_dense_modules(Path(minilm_dir), tmp_path, [Dense(384, 8)])
    config = json.loads((folder / "2_Dense" / "config.json").read_text())
    config["activation_function"] = "mypackage.activations.Swish"
    (folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="activation_function 'mypackage.activations.Swish'.*trust_remote_code=True"):
        LLM(str(folder), task="embed", num_kv_blocks=64)


def test_do_lower_case_lowercases_text_before_tokenizing(minilm_dir, tmp_path):
    """sentence_bert_config.json `do_lower_case`: with a case-sensitive tokenizer, upper-case words
    would become other tokens; sentence-transformers lower-cases first, and so do we."""
    import json
    import os
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    from anymodel import LLM

    for f in os.listdir(minilm_dir):
        if f not in ("tokenizer.json", "tokenizer_config.json", "sentence_bert_config.json"):
            (tmp_path / f).symlink_to(os.path.join(minilm_dir, f))
    tok = json.loads((Path(minilm_dir) / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False  # case-sensitive: "Paris" is not "paris"
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    tok_config = json.loads((Path(minilm_dir) / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tok_config, "do_lower_case": False}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    texts = ["Paris is the CAPITAL of France.", "A Man Is Eating Food."]
    st = SentenceTransformer(str(tmp_path), device="cpu")
    llm = LLM(str(tmp_path), task="embed", num_kv_blocks=64, dtype="float32")
    outs = llm.embed(texts, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [st.tokenizer(t.lower())["input_ids"] for t in texts]
    assert outs[0].prompt_token_ids != llm.get_tokenizer().encode(texts[0])  # the case mattered
    ref = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(torch.tensor([o.outputs.embedding for o in outs]), ref.float(), atol=1e-5, rtol=1e-4)
