"""Structured outputs: constraints (params.py), grammars (grammar.py, compiler.py), the engine's
matchers (manager.py) and the token bitmasks the sampler applies (bitmask.py)."""
