"""A small, deterministic, offline tokenizer for the tiny test models.

Byte-level BPE trained in-process on a built-in English text (vocab 384: 4 specials at ids 0-3,
256 byte symbols, 124 merges). Byte-level means every string round-trips, including non-ASCII,
so incremental detokenization (multi-byte characters split across tokens) is exercised.

    ids 0..3 = <pad> <s> </s> <unk>;  encode("hi") -> [<s>, ...]   (bos prepended, like Llama)
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 384
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # trainer puts them first: ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

# One role line per message; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A tiny model is built from a random config, and the
test compares its greedy tokens with the tokens of plain Transformers on the same checkpoint.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris is
the capital of France, and Berlin is the capital of Germany. Once upon a time there was a little
cat who lived in a house near the river. Every morning the cat walked to the water and watched
the fish. The sun was warm and the sky was blue. In the evening the cat went home and slept.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Code: def main(): return x + y * 2 if x else None.
The user asked the assistant a question, and the assistant gave a short and helpful answer.
Attention is all you need. Paged attention stores keys and values in blocks of sixteen tokens.
Caf\u00e9, na\u00efve, \u00fcber, \u65e5\u672c\u8a9e, \u4f60\u597d, \U0001f600 emoji and other unicode text.
"""


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh `PreTrainedTokenizerFast` (training is cached; each call returns a new object)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
    )


def save_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    tok = build_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
