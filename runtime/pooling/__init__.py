"""Pooling tasks (embed, classify, score, reward): task resolution and checks (tasks.py), the
offline LLM methods (offline.py) and the engine's collection of pooled outputs (outputs.py)."""
