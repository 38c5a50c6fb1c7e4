"""Bitmask application (xgrammar's kernel against the torch reference) and grammars over other
tokenizers: a WordPiece vocabulary walked token by token to the grammar's end gives valid text."""

from __future__ import annotations

import re

import pytest
import torch

from anymodel import StructuredOutputsParams
from anymodel.structured_output.bitmask import apply_bitmask, apply_bitmask_reference, unpack_bitmask
from anymodel.structured_output.compiler import GrammarCompiler
from anymodel.structured_output.grammar import choice_ebnf
from tests.structured.cases import valid_json


@pytest.mark.parametrize("vocab, width_words", [(384, 12), (100, 4), (130, 4)])
def test_fast_bitmask_equals_reference(vocab, width_words):
    """vocab 130 > 4 * 32: tokens past the mask are never allowed; 100 < 128: the mask is wider."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, vocab, generator=g)
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, width_words), generator=g, dtype=torch.int64).to(torch.int32)
    rows = [0, 2, 3]
    fast, ref = logits.clone(), logits.clone()
    apply_bitmask(fast, bitmask, rows)
    apply_bitmask_reference(ref, bitmask, rows)
    assert torch.equal(fast, ref)
    assert torch.equal(fast[[1, 4]], logits[[1, 4]])  # rows without a mask are untouched
    allowed = unpack_bitmask(bitmask, vocab)
    assert torch.equal(torch.isfinite(ref[rows]), allowed)
    assert allowed[0, 5] == bool((int(bitmask[0, 0]) >> 5) & 1)


def test_choice_ebnf_escapes_quotes_and_backslashes():
    assert choice_ebnf(['a"b', "c\\d"]) == 'root ::= "a\\"b" | "c\\\\d"'


def _walk(compiler: GrammarCompiler, tokenizer, params, seed: int, max_steps: int = 80) -> str | None:
    """Random allowed tokens until the matcher terminates (EOS); the decoded text, or None if it did not."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiler.submit(params).result())
    bitmask = xgr.allocate_token_bitmask(1, compiler.vocab_size)
    g, out = torch.Generator().manual_seed(seed), []
    for _ in range(max_steps):
        matcher.fill_next_token_bitmask(bitmask)
        allowed = unpack_bitmask(bitmask, compiler.vocab_size)[0].nonzero().flatten()
        token = int(allowed[torch.randint(len(allowed), (1,), generator=g)])
        assert matcher.accept_token(token)
        if matcher.is_terminated():
            return tokenizer.decode(out)
        out.append(token)
    return None


def test_wordpiece_tokenizer(tmp_path):
    """A WordPiece vocabulary (no braces or quotes in it): a choice walks to a valid answer, and JSON
    is a dead end from the first token, which the engine turns into the request's error."""
    import xgrammar as xgr

    from anymodel.structured_output.bitmask import rows_allowing_any
    from tests.pooling.encoders import build_tokenizer

    tok = build_tokenizer("bert")
    compiler = GrammarCompiler(tok, len(tok), {tok.sep_token_id})
    choices = [_walk(compiler, tok, StructuredOutputsParams(choice=["paris", "berlin"]), s) for s in range(4)]
    assert all(c is not None and c.replace(" ", "") in ("paris", "berlin") for c in choices), choices
    matcher = xgr.GrammarMatcher(compiler.submit(StructuredOutputsParams(json_object=True)).result())
    bitmask = xgr.allocate_token_bitmask(1, compiler.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    assert rows_allowing_any(bitmask) == [False]


def _sentencepiece_style_tokenizer():
    """A Llama/SentencePiece-style tokenizer: ▁ for spaces, <0xNN> byte fallback (xgrammar: BYTE_FALLBACK)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.models.tokenizer import _CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_tokenizer_walks_to_valid_output():
    tok = _sentencepiece_style_tokenizer()
    compiler = GrammarCompiler(tok, len(tok), {tok.eos_token_id})
    choices = ["new york", "paris", "日本 ok"]
    texts = [_walk(compiler, tok, StructuredOutputsParams(choice=choices), s) for s in range(8)]
    assert all(t in choices for t in texts), texts
    regex = r"[a-z]+ [0-9]{2}!"
    texts = [_walk(compiler, tok, StructuredOutputsParams(regex=regex), s) for s in range(8)]
    assert all(t is None or re.fullmatch(regex, t) for t in texts) and any(texts), texts


def test_byte_level_bpe_regex_walk(tmp_path):
    from tests.models.tokenizer import save_tokenizer
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    compiler = GrammarCompiler(tok, 384, {tok.eos_token_id})
    texts = [_walk(compiler, tok, StructuredOutputsParams(regex=r"(日本|naïve|\d)+!"), s) for s in range(6)]
    assert all(t is None or re.fullmatch(r"(日本|naïve|\d)+!", t) for t in texts)
    assert any(t is not None for t in texts)
    assert compiler.num_cached == 1  # six requests, one compile


def test_manager_replays_output_tokens_into_a_fresh_matcher(tmp_path):
    """A request that already has output tokens when its matcher is made (or whose matcher fell out
    of step) gets them replayed: its mask equals that of a matcher that followed every token."""
    from types import SimpleNamespace

    import xgrammar as xgr
    from transformers import AutoTokenizer

    from anymodel import SamplingParams
    from anymodel.engine.request import Request
    from anymodel.structured_output.manager import StructuredOutputManager
    from tests.models.tokenizer import save_tokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    so = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}},
                                 disable_any_whitespace=True)
    manager = StructuredOutputManager(tok, 384, frozenset({tok.eos_token_id}))
    req = Request("r", [1, 5], SamplingParams(structured_outputs=so), max_tokens=32)
    assert manager.park(req)
    assert manager.num_parked == 1
    manager.states["r"].future.result()  # compiled (in the pool)
    assert manager.take_ready(idle=False) == [req] and manager.num_parked == 0
    prefix = tok.encode('{"a": 1', add_special_tokens=False)
    for token in prefix:
        req.append_token(token)
    sched = SimpleNamespace(scheduled=[SimpleNamespace(request=req, samples=True)])
    got = manager.bitmask(sched)
    reference = xgr.GrammarMatcher(manager.compiler.submit(so).result())
    assert all(reference.accept_token(t) for t in prefix)
    want = xgr.allocate_token_bitmask(1, manager.compiler.vocab_size)
    reference.fill_next_token_bitmask(want)
    assert torch.equal(got.row_of("r"), want[0])
    assert manager.accept({"r": tok.encode("2", add_special_tokens=False)[0]}) == {}


def test_sampler_applies_the_bitmask_in_both_paths():
    """Greedy rows under a grammar (the fast path) and a batch mixing a sampled row (the full
    pipeline): each constrained row's token is the argmax over its allowed tokens."""
    from anymodel import SamplingParams
    from anymodel.worker.sampler import SamplingRow, sample

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 100, generator=g)
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, 4), generator=g, dtype=torch.int64).to(torch.int32)
    before, masked = logits.clone(), logits.clone()
    apply_bitmask_reference(masked, bitmask, [0, 1, 2])
    want = masked.argmax(dim=-1).tolist()

    def row(i, temperature=0.0):
        return SamplingRow(SamplingParams(temperature=temperature), [1], [], [], None, bitmask[i])

    assert sample(logits, [row(0), row(1), row(2)]).token_ids == want
    mixed = sample(logits, [row(0), row(1), row(2, temperature=1.0)])
    assert mixed.token_ids[:2] == want[:2] and unpack_bitmask(bitmask, 100)[2, mixed.token_ids[2]]
    assert torch.equal(logits, before)  # the caller's logits are left as they were
