"""Grammar compilation off the step loop: a thread pool, and a cache of compiled grammars.

    submit(params) -> Future[CompiledGrammar]   keyed by StructuredOutputsParams.key()

Parsing runs at once in the caller (a bad spec raises ValueError there); compiling against the
vocabulary runs in the pool (so does the one-time scan of the vocabulary), so a request waiting for
its grammar never stalls the step loop.
Identical constraints share one compile (and one cache entry, least recently used evicted).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from anymodel.structured_output.grammar import build_grammar
from anymodel.structured_output.params import StructuredOutputsParams

CACHE_ENTRIES = 256
COMPILE_THREADS = 2


def grammar_vocab_size(tokenizer, model_vocab_size: int) -> int:
    """The vocabulary the masks cover: the model's logits width (padded past the tokenizer's
    tokens, which the grammar never allows), or the tokenizer's if it holds more."""
    return max(model_vocab_size, len(tokenizer) if tokenizer is not None else 0)


class GrammarCompiler:
    def __init__(self, tokenizer, model_vocab_size: int, stop_token_ids) -> None:
        self.vocab_size = grammar_vocab_size(tokenizer, model_vocab_size)
        self._tokenizer, self._stop_token_ids = tokenizer, sorted(stop_token_ids)
        self._xgr = None  # xgrammar's compiler, built in the pool on first use (its vocabulary scan costs)
        self._xgr_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=COMPILE_THREADS, thread_name_prefix="anymodel-grammar")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._cache_lock = threading.Lock()  # the engine thread and the server's pre-check both submit

    def _compile(self, grammar):
        """In a pool thread: the grammar against the vocabulary -> xgrammar CompiledGrammar."""
        with self._xgr_lock:
            if self._xgr is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self._stop_token_ids or None)
                # our own cache (below) keys by request spec; xgrammar's would hold a second copy
                self._xgr = xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
        return self._xgr.compile_grammar(grammar)

    def submit(self, params: StructuredOutputsParams) -> Future:
        key = params.key()
        with self._cache_lock:
            future = self._cache.get(key)
            if future is not None and not (future.done() and future.exception() is not None):
                self._cache.move_to_end(key)
                return future
        grammar = build_grammar(params)  # ValueError now, in the caller, for an invalid spec
        with self._cache_lock:
            future = self._cache.get(key)
            if future is None or (future.done() and future.exception() is not None):
                future = self._cache[key] = self._pool.submit(self._compile, grammar)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return future

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
