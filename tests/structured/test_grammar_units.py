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
    is a dead end from the first token, which the engine turns into the request's error (allows_any)."""
    import xgrammar as xgr

    from anymodel.structured_output.bitmask import allows_any
    from tests.pooling.encoders import build_tokenizer

    tok = build_tokenizer("bert")
    compiler = GrammarCompiler(tok, len(tok), {tok.sep_token_id})
    choices = [_walk(compiler, tok, StructuredOutputsParams(choice=["paris", "berlin"]), s) for s in range(4)]
    assert all(c is not None and c.replace(" ", "") in ("paris", "berlin") for c in choices), choices
    matcher = xgr.GrammarMatcher(compiler.submit(StructuredOutputsParams(json_object=True)).result())
    bitmask = xgr.allocate_token_bitmask(1, compiler.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    assert not allows_any(bitmask[0])


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
