"""Functions for `llm.apply_model`, run on every rank (importable, so they pickle by reference)."""

import os


def param_shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}


def pid(model) -> int:
    return os.getpid()
