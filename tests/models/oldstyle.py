"""Build OldStyle checkpoints (tests/models/custom/modeling_oldstyle.py): remote code whose
constants are computed in `__init__` and absent from the checkpoint.

    path, model = build_oldstyle(tmp_path, own_attention=True)   # compat path flavour
    argmax_greedy(model, prompt_ids, n)   # tests/reference.py: the tokens of the model as built (constants intact)

The reference is the in-memory model that was saved, built on a real device, so its constants
hold what its own code computes; `from_pretrained` in Transformers 5 would not reproduce them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, save_tokenizer
from tests.models.zoo import CUSTOM_CODE_DIR, _one_thread, _rescale_
from tests.reference import argmax_greedy

CLASSES = {True: "OldStyleForCausalLM", False: "OldStyleInterfaceForCausalLM"}
BASE_CLASSES = {True: "OldStyleModel", False: "OldStyleInterfaceModel"}


@_one_thread()
def build_oldstyle(out_dir: Path, *, own_attention: bool, mask_window: int | None = None, seed: int = 0):
    from tests.models.custom import modeling_oldstyle
    from tests.models.custom.configuration_oldstyle import OldStyleConfig

    config = OldStyleConfig(vocab_size=VOCAB_SIZE, own_attention=own_attention, mask_window=mask_window,
                            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    config.auto_map = {
        "AutoConfig": "configuration_oldstyle.OldStyleConfig",
        "AutoModel": f"modeling_oldstyle.{BASE_CLASSES[own_attention]}",
        "AutoModelForCausalLM": f"modeling_oldstyle.{CLASSES[own_attention]}",
    }
    torch.manual_seed(seed)
    model = getattr(modeling_oldstyle, CLASSES[own_attention])(config).eval()
    _rescale_(model, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    _drop_from_checkpoint(out_dir / "model.safetensors", "head_gain")
    save_tokenizer(out_dir)
    for source in CUSTOM_CODE_DIR.glob("*_oldstyle.py"):
        shutil.copy(source, out_dir / source.name)
    return out_dir, model


def _drop_from_checkpoint(file: Path, suffix: str) -> None:
    """As checkpoints saved by older code lack some persistent buffers."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(file)).items() if not k.endswith(suffix)}
    save_file(tensors, str(file), metadata={"format": "pt"})
