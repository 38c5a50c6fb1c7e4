"""Incremental detokenization and stop strings, with a byte-level tokenizer that splits characters."""

from anymodel.engine.detokenizer import Detokenizer


class ByteTokenizer:
    """Each token is one UTF-8 byte: multi-byte characters arrive over several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")

    def encode(self, text):
        return list(text.encode())


def feed(detok: Detokenizer, text: str):
    stops = []
    for t in ByteTokenizer().encode(text):
        stop = detok.add_tokens([t])
        stops.append(stop)
        if stop:
            break
    return stops


def test_incremental_text_equals_full_decode_with_multibyte_chars():
    d = Detokenizer(ByteTokenizer())
    text = "héllo wörld — ✓ done"
    feed(d, text)
    assert d.text == text


def test_incomplete_character_is_held_back():
    d = Detokenizer(ByteTokenizer())
    d.add_tokens(list("é".encode())[:1])
    assert d.text == ""
    d.add_tokens(list("é".encode())[1:])
    assert d.text == "é"


def test_stop_string_cuts_text_and_reports():
    d = Detokenizer(ByteTokenizer(), stop=["STOP", "xyz"])
    stops = feed(d, "abc ST STOP tail")
    assert stops[-1] == "STOP"
    assert d.text == "abc ST "


def test_stop_string_kept_when_asked():
    d = Detokenizer(ByteTokenizer(), stop=["\n"], include_stop_str_in_output=True)
    feed(d, "line one\nline two")
    assert d.text == "line one\n"


def test_earliest_stop_string_wins():
    d = Detokenizer(ByteTokenizer(), stop=["cd", "bcde"])
    feed(d, "abcdef")
    assert d.text == "ab"  # "cd" completes first, at "abcd"


def _metaspace_tokenizer():
    """A SentencePiece-style word tokenizer: "▁" marks a word start, and decoding drops the "▁" of
    the very first token (so decode(["▁Paris"]) == "Paris" but decode(["▁is", "▁Paris"]) == "is Paris")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁The": 1, "▁capital": 2, "▁is": 3, "▁Paris": 4, ".": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", clean_up_tokenization_spaces=False)


def test_first_token_is_decoded_in_the_prompts_context():
    tok = _metaspace_tokenizer()
    prompt = tok.encode("The capital is")
    assert tok.decode([4]) == "Paris"  # out of context the word-start space is lost
    d = Detokenizer(tok, prompt_ids=prompt)
    for t in (4, 5):  # "▁Paris", "."
        d.add_tokens([t])
    d.flush()
    assert d.text == " Paris."
    assert tok.decode(prompt) + d.text == tok.decode(prompt + [4, 5])  # prompt + text reads as one decode


def _fast_path_tokenizers():
    from pathlib import Path

    from transformers import AutoTokenizer

    import anymodel
    from tests.models.tokenizer import build_tokenizer

    demo = Path(anymodel.__file__).parent / "demo" / "model"
    return [build_tokenizer(), AutoTokenizer.from_pretrained(str(demo)), _metaspace_tokenizer()]


def _run(tok, prompt, tokens, stop, reference: bool):
    d = Detokenizer(tok, stop=stop, prompt_ids=prompt, skip_special_tokens=len(tokens) % 2 == 0)
    if reference:
        d._decode_ids = tok.decode  # the Transformers call the fast path stands in for
    steps = []
    for t in tokens:
        steps.append((d.add_tokens([t]), d.text))
        if steps[-1][0]:
            break
    d.flush()
    return steps, d.text


def test_fast_decode_path_matches_transformers_decode():
    """The Rust-level decode gives the same text and stop cuts as tokenizer.decode, token by token."""
    import random

    from anymodel.engine.detokenizer import _fast_decode

    rng = random.Random(0)
    for tok in _fast_path_tokenizers():
        assert _fast_decode(tok) is not None
        vocab = len(tok)
        for _ in range(30):
            prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 8))]
            tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
            sample = tok.decode(tokens)
            stop = [sample[i : i + 2] for i in (len(sample) // 2, len(sample) // 3) if sample[i : i + 2].strip()]
            assert _run(tok, prompt, tokens, stop, False) == _run(tok, prompt, tokens, stop, True)


def test_fast_decode_path_skips_tokenizers_with_space_cleanup():
    from anymodel.engine.detokenizer import _fast_decode

    tok = _metaspace_tokenizer()
    tok.clean_up_tokenization_spaces = True
    assert _fast_decode(tok) is None
    assert _fast_decode(ByteTokenizer()) is None
