"""Incremental detokenization and stop strings, with a byte-level tokenizer that splits characters."""

from anymodel.detokenizer import Detokenizer


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
