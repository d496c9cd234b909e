"""Work of the realtime input path that must not run on the event loop, and when it is worth a thread.

Decoding, resampling and encoding client audio (``conversation.item.create`` with up to 15 MiB of
base64, large ``input_audio_buffer.append`` s, ``conversation.item.retrieve``) runs in a worker thread
through :func:`run_off_loop` (anyio's thread pool, not an engine's scheduler: this is the session's own
work, not an engine job). The session's reader awaits it, so the client's events are still handled in
the order they were sent: an item created and then retrieved is there when the retrieve runs.

The work receives a stop flag. Cancelling the awaiting task (the session closing) returns at once
(the thread is abandoned, never waited for) and sets the flag; the work checks it between pieces and
ends with :class:`Abandoned`, so a client that disconnects in the middle of a 15 MiB item does not keep
a core busy for the rest of it.

**Inline or thread?** A hop to a thread costs ~0.1 ms on an idle machine, more when a worker is busy
(every hop back to the loop then waits for the GIL, up to the interpreter's 5 ms switch interval).
Measured on this project's machine, decoding and resampling an append costs ~0.6 ms per second of
pcm16 (~0.24 ms per second of G.711), so the usual 20-100 ms appends (under 0.1 ms) are far cheaper
inline than a hop. Above :data:`INLINE_MAX_CHARS` of base64 (~1 s of pcm16, ~6 s of G.711: at most
~1.5 ms of work) the work goes to a thread. Joining and converting stored int16 audio for Whisper costs
~0.05 ms per 128 K samples and ~4 ms per million (memory bound): up to :data:`INLINE_MAX_SAMPLES` (8 s at
16 kHz, a typical voice turn) it stays inline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")

INLINE_MAX_CHARS = 64 * 1024  # base64 characters of audio decoded inline; more goes to a thread
INLINE_MAX_SAMPLES = 1 << 17  # stored samples copied / converted inline; more goes to a thread


class Abandoned(Exception):
    """Raised by off-loop work that saw its stop flag: nobody waits for its result any more."""


def check(stop: threading.Event | None) -> None:
    """Between two pieces of work: end it if its caller went away."""
    if stop is not None and stop.is_set():
        raise Abandoned


async def run_off_loop(work: Callable[[threading.Event], T]) -> T:
    """``work(stop)`` in a worker thread; cancelling the caller abandons it (and sets ``stop``)."""
    stop = threading.Event()
    # The result goes through ``results``, not as the function's return value: an idle worker thread keeps
    # its last job's function, arguments and return value alive until its next job, and here those are
    # up to 15 MiB of audio that the conversation may already have dropped.
    jobs, results = [work], list[T]()

    def run() -> None:
        results.append(jobs.pop()(stop))

    try:
        await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        return results.pop()
    finally:
        stop.set()  # done already, or abandoned: either way nothing more is wanted from it
        jobs.clear()
        results.clear()
