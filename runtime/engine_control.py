"""The offline API's engine controls, in vLLM's names (mixed into LLM): set_tokenizer,
reset_prefix_cache, sleep / wake_up (sleep_mode.py)."""

from __future__ import annotations

import logging

from anymodel.sleep_mode import check_level, check_tags, sleep_worker, wake_worker

logger = logging.getLogger("anymodel")


class EngineControlMixin:
    _sleep_level: int = 0  # 0: awake
    _asleep_tags: tuple[str, ...] = ()

    def set_tokenizer(self, tokenizer) -> None:
        """Tokenize and detokenize later requests with `tokenizer` (requests in flight keep theirs)."""
        self.engine.set_tokenizer(tokenizer)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix: later requests compute their prompts afresh. Safe while
        requests run (their blocks stay theirs); returns True, as vLLM does on success."""
        self.engine.kv.pool.reset_prefix_cache()
        return True

    def sleep(self, level: int = 1) -> None:
        """Free the KV cache and move the weights to host memory on every worker (see sleep_mode.py
        for what each level does here); the engine must be idle. wake_up() restores both."""
        check_level(level)
        if self.engine.has_unfinished():
            raise ValueError("sleep() needs an idle engine: requests are still in flight (their KV cache would be "
                             "freed); let them finish or abort them first")
        freed = sum(self.engine.collective_rpc(sleep_worker, args=(level,)))
        self.engine.kv.pool.reset_prefix_cache()  # the cached blocks' contents are gone
        self._sleep_level, self._asleep_tags = level, ("weights", "kv_cache")
        logger.info("anymodel: asleep at level %d; %.3f GiB of KV cache freed", level, freed / 2**30)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore what sleep() freed: tags=None both, ["weights"] or ["kv_cache"] one of them."""
        tags = check_tags(tags)
        self.engine.collective_rpc(wake_worker, args=(tags,))
        self._asleep_tags = tuple(t for t in self._asleep_tags if t not in tags)
        if not self._asleep_tags:
            self._sleep_level = 0

    def is_sleeping(self) -> bool:
        return bool(self._asleep_tags)

    def _check_awake(self) -> None:
        if self._asleep_tags:
            raise ValueError(f"the engine is asleep (LLM.sleep(level={self._sleep_level}); still asleep: "
                             f"{list(self._asleep_tags)}): call LLM.wake_up() before sending requests")
