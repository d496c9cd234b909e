"""Saved llama.cpp context states: per-session KV state, and a preempted job's state.

llama.cpp has one context per model, and a job reuses only the longest common prefix of its prompt with
whatever the context last evaluated. Without help, a realtime session's turn N+1 re-evaluates its whole
history whenever another session (or an HTTP request) used the model in between. So:

- After a job with a ``cache_key`` (a realtime session id), the context holds that key's state; it is
  saved under the key before any other job changes it (:class:`SessionStates`: lazily, so a session
  alone on the model never pays for a copy). Before a keyed job starts, if the key's saved state shares
  a longer prefix with the prompt than the live context does, it is restored first. :class:`StateCache`
  holds these states, bounded in bytes (``llm_state_cache_mb``), least recently used out first.
- A generation that yields its slot to a higher-priority job between tokens saves its state, lets that
  job run (it changes the context), and restores it to go on (:mod:`localrt.engines.llm_generate`).

What a state holds, and what it leaves out: ``Llama.save_state`` also copies ``scores`` (``n_batch`` x
``n_vocab`` floats: 100 MB for a 49k vocabulary at n_batch 512, 47 MB of it for a 241-token prompt,
measured on the embedded model) and the context's logits. Neither is needed: sampling reads the logits
llama.cpp computes, and ``Llama.generate`` always decodes at least the prompt's last token again after
a restore (``_requires_eval``). So a :class:`SavedState` is the KV cells of sequence 0
(``llama_state_seq_get_data``: about 23 KB per token on the embedded model, 5.6 MB for 241 tokens) plus
the token ids they hold. Saving or restoring 5 MB takes about 2 ms.

Everything here runs in the model's worker thread (the context is not thread safe).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

_SEQ = 0  # llama-cpp-python evaluates everything as sequence 0


@dataclass(frozen=True)
class SavedState:
    """The evaluated tokens of a context and their KV cells (see the module docstring)."""

    tokens: npt.NDArray[np.intc]
    data: ctypes.Array[ctypes.c_uint8]
    size: int  # bytes of ``data`` llama.cpp wrote

    @property
    def nbytes(self) -> int:
        return ctypes.sizeof(self.data) + int(self.tokens.nbytes)


def common_prefix(a: Sequence[int] | npt.NDArray[np.intc], b: Sequence[int] | npt.NDArray[np.intc]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    left = np.asarray(a[:n], dtype=np.intc)
    right = np.asarray(b[:n], dtype=np.intc)
    diff = np.flatnonzero(left != right)
    return int(diff[0]) if diff.size else n


def live_tokens(llama: Llama) -> npt.NDArray[np.intc]:
    """The tokens the context holds now (a view: copy it to keep it)."""
    return llama.input_ids[: llama.n_tokens]


def reused_prefix(llama: Llama, tokens: Sequence[int]) -> int:
    """How many leading prompt tokens ``Llama.generate`` will reuse from the live context.

    It keeps the common prefix, but decodes at least the prompt's last token again (its logits are needed
    to sample), so at most ``len(tokens) - 1``."""
    return min(common_prefix(live_tokens(llama), tokens), max(len(tokens) - 1, 0))


def save(llama: Llama) -> SavedState:
    """The live context's state (blocking; a few milliseconds per 5 MB)."""
    import llama_cpp

    n = llama.n_tokens
    llama._ctx.kv_cache_seq_rm(_SEQ, n, -1)  # nothing past what input_ids describes
    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, _SEQ)
    data = (ctypes.c_uint8 * max(size, 1))()
    written = llama_cpp.llama_state_seq_get_data(ctx, data, size, _SEQ) if size else 0
    return SavedState(tokens=llama.input_ids[:n].copy(), data=data, size=int(written))


def restore(llama: Llama, state: SavedState) -> bool:
    """Make ``state`` the live context (blocking). False (and an empty context) if llama.cpp refused it."""
    import llama_cpp

    if same_as_live(llama, state):
        return True
    n = len(state.tokens)
    llama._ctx.kv_cache_seq_rm(_SEQ, -1, -1)
    ok = n == 0 or llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, state.data, state.size, _SEQ) > 0
    if not ok:
        logger.warning("llama.cpp refused a saved context state of %d tokens; evaluating again", n)
        n = 0
    else:
        llama.input_ids[:n] = state.tokens
    llama.n_tokens = n
    llama._requires_eval = True  # the restored cells carry no logits: decode the last token again
    return ok


def same_as_live(llama: Llama, state: SavedState) -> bool:
    """Whether the live context already holds exactly ``state``'s tokens (so the same KV cells)."""
    n = len(state.tokens)
    return bool(llama.n_tokens == n and np.array_equal(live_tokens(llama), state.tokens))


class StateCache:
    """Saved states by key (a realtime session id), at most ``budget`` bytes, least recently used out."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._states: OrderedDict[str, SavedState] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def used(self) -> int:
        """Bytes held."""
        return self._used

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: str) -> bool:
        return key in self._states

    def get(self, key: str) -> SavedState | None:
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, key: str, state: SavedState) -> None:
        """Keep ``state`` under ``key`` (replacing the old one); evict the least recently used to fit.
        A state larger than the whole budget is not kept."""
        with self._lock:
            self._drop(key)
            if state.nbytes > self.budget:
                return
            while self._states and self._used + state.nbytes > self.budget:
                self._drop(next(iter(self._states)))
            self._states[key] = state
            self._used += state.nbytes

    def discard(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._used = 0

    def _drop(self, key: str) -> None:
        old = self._states.pop(key, None)
        if old is not None:
            self._used -= old.nbytes


class SessionStates:
    """The per-key half of the worker: a key's context is saved when another job is about to change it,
    and restored before the key's next job when that saves work.

    Saving is lazy: after a keyed job the live context *is* that key's state, so it is only copied out
    (into the cache) when a job of another key, an unkeyed job, or a preempted generation coming back
    is about to change it. A session alone on the model never pays for a copy; sessions that alternate
    pay one save and one restore per switch."""

    def __init__(self, budget: int) -> None:
        self.cache = StateCache(budget)
        self._live_key: str | None = None  # whose finished job the live context holds, not yet saved

    def prepare(self, llama: Llama, key: str | None, tokens: Sequence[int]) -> int:
        """Before a job (keyed or not) uses the context: save the live context for its key if it is
        another key's; restore ``key``'s state if it shares more of ``tokens`` than the live context.
        Returns how many prompt tokens generation will reuse."""
        self.flush(llama, unless=key)
        if key is not None and self.cache.enabled:
            saved = self.cache.get(key)
            if saved is not None:
                live = common_prefix(live_tokens(llama), tokens)
                if common_prefix(saved.tokens, tokens) > live:
                    restore(llama, saved)
        return reused_prefix(llama, tokens)

    def flush(self, llama: Llama, *, unless: str | None = None) -> None:
        """The live context is about to change: keep it under its key (unless that key is ``unless``,
        whose job is about to continue it)."""
        live, self._live_key = self._live_key, None
        if live is not None and live != unless and llama.n_tokens > 0:
            self.cache.put(live, save(llama))

    def finish(self, key: str | None) -> None:
        """After a job: the live context is now ``key``'s (nobody's without a key)."""
        self._live_key = key if self.cache.enabled else None

    def clear(self) -> None:
        self._live_key = None
        self.cache.clear()
