"""Tiny random encoder checkpoints (BERT / RoBERTa / XLM-R families) with an offline WordPiece
tokenizer that handles text pairs like the real ones:

    BERT     [CLS] a [SEP] b [SEP]      token_type_ids 0 ... 0 1 ... 1
    RoBERTa  <s> a </s></s> b </s>      no token_type_ids; positions start at pad_token_id + 1

    path = build_encoder("bert", "BertForSequenceClassification", tmp_path, num_labels=1)
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

_WORDS = """the a an of to and in is are was were be it that this for on with as at by from or
not but what which who how why when where there here query document answer question relevant
cat dog fox river sun sky house city paris france berlin germany capital model test text pair
quick brown lazy jumps over tiny random small large good bad fine day night morning evening
hello world you we they he she i am one two three four five six seven eight nine ten""".split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")

# family -> (special tokens in id order, pad, cls/bos, sep/eos, pair template, token types)
_SPECIALS = {
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[PAD]", "[CLS]", "[SEP]"),
    "roberta": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<pad>", "<s>", "</s>"),
}
FAMILY = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}


def _vocab(specials: list[str]) -> dict[str, int]:
    tokens = specials + _CHARS + ["##" + c for c in _CHARS] + _WORDS
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


@functools.lru_cache(maxsize=None)
def _tokenizer_json(family: str) -> str:
    specials, pad, cls, sep = _SPECIALS[family]
    unk = specials[1] if family == "bert" else "<unk>"
    vocab = _vocab(specials)
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ids = [(cls, vocab[cls]), (sep, vocab[sep])]
    if family == "bert":
        tmpl = processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=ids)
    else:
        tmpl = processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} {sep} $B {sep}", special_tokens=ids)
    tok.post_processor = tmpl
    return tok.to_str()


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    specials, pad, cls, sep = _SPECIALS[family]
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if family == "bert" else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)), pad_token=pad, cls_token=cls,
        sep_token=sep, unk_token=specials[1] if family == "bert" else "<unk>", mask_token=specials[4],
        bos_token=cls, eos_token=sep, model_input_names=inputs, model_max_length=128,
    )


def tiny_config(model_type: str, architecture: str, num_labels: int = 1):
    family = FAMILY[model_type]
    vocab = _vocab(_SPECIALS[family][0])
    common = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, num_labels=num_labels, initializer_range=0.2)
    if family == "bert":
        extra = dict(max_position_embeddings=128, type_vocab_size=2, pad_token_id=0)
    else:  # positions padding_idx + 1 .. : the table needs 2 more rows
        extra = dict(max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config = transformers.AutoConfig.for_model(model_type, **common, **extra)
    config.architectures = [architecture]
    return config


def _build(model_type: str, architecture: str, out: Path, num_labels: int, seed: int) -> None:
    torch.manual_seed(seed)
    config = tiny_config(model_type, architecture, num_labels)
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    build_tokenizer(FAMILY[model_type]).save_pretrained(str(out))


@functools.lru_cache(maxsize=None)
def cached_encoder(model_type: str, architecture: str, num_labels: int = 1, seed: int = 0) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"anymodel-{model_type}-"))
    _build(model_type, architecture, out, num_labels, seed)
    return out


def build_encoder(model_type: str, architecture: str, out_dir: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A tiny random `architecture` checkpoint + tokenizer in `out_dir` (built once per process)."""
    shutil.copytree(cached_encoder(model_type, architecture, num_labels, seed), out_dir, dirs_exist_ok=True)
    return Path(out_dir)
