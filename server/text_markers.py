"""Streaming text that may hold a marker (</think>, <tool_call>): how much to hold back."""


def held_back(text: str, marker: str) -> int:
    """How many trailing characters of `text` could be the start of `marker` (not yet safe to send)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
