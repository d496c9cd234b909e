"""Voice activity detection with silero VAD, run from its ONNX file on onnxruntime (no torch).

Design:
- :class:`SileroVAD` is the shared engine: one ``onnxruntime.InferenceSession`` and the
  :class:`~localrt.engines.scheduler.Scheduler` (one worker) that runs it. Every append of a realtime
  session is one REALTIME job: a few 32 ms windows, about a millisecond of work, so the queue is deep
  (every session feeds it continuously) and nothing needs preempting.
- silero is stateful (an LSTM state plus 64 samples of context carried from window to window), and the
  state belongs to one audio stream. Each realtime session opens its own :class:`VADStream`, which keeps
  that state and a remainder of fewer than 512 samples. Every 32 ms window (512 samples at 16 kHz) is
  evaluated exactly once, in order; nothing is re-scanned, so the cost of an append is proportional to
  the audio it adds, not to the length of the turn.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from localrt.catalog import Catalog
from localrt.engines.scheduler import JobControl, Priority, Scheduler, SchedulerStats
from localrt.settings import Settings

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # samples per evaluation at 16 kHz (32 ms): the only size the model accepts
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE
_CONTEXT = 64  # samples of the previous window that the model sees in front of each window
MAX_QUEUE = 256  # appends waiting; each is a few windows (about 1 ms), from every realtime session


class SileroVAD:
    """The silero VAD model, shared by every session. Open one :meth:`stream` per audio stream."""

    sample_rate = SAMPLE_RATE
    window = WINDOW

    def __init__(self, path: Path, session: Any, *, max_queue: int = MAX_QUEUE) -> None:
        self.path = path
        self._session = session
        self.scheduler = Scheduler("vad", slots=1, max_queue=max_queue, shares_cpu=False)

    @classmethod
    def load(cls, path: Path) -> SileroVAD:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        logger.info("loaded silero VAD from %s", path)
        return cls(path, session)

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> SileroVAD:
        if catalog.vad is None:
            raise ValueError("no VAD model: install the embedded default (silero-vad) or set load_vad=false")
        return cls.load(catalog.vad)

    def stream(self) -> VADStream:
        return VADStream(self)

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and running job with EngineClosed (blocking, bounded)."""
        self.scheduler.close()

    # -- worker thread ---------------------------------------------------------------------------------
    def _run(self, frame: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        out, new_state = self._session.run(
            None,
            {"input": frame[np.newaxis, :], "state": state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)},
        )
        return float(out[0, 0]), new_state


class VADStream:
    """Speech probabilities for one continuous 16 kHz stream, one per 32 ms window, each computed once."""

    def __init__(self, engine: SileroVAD) -> None:
        self._engine = engine
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.windows = 0  # windows evaluated so far: window k covers samples [512k, 512(k+1))

    def feed(self, samples: np.ndarray) -> list[float]:
        """Blocking: add float32 16 kHz samples, return the probability of each window completed."""
        x = np.asarray(samples, dtype=np.float32)
        if self._pending.size:
            x = np.concatenate([self._pending, x])
        n_windows = x.size // WINDOW
        probs: list[float] = []
        for k in range(n_windows):
            window = x[k * WINDOW : (k + 1) * WINDOW]
            frame = np.concatenate([self._context, window])
            prob, self._state = self._engine._run(frame, self._state)
            self._context = window[-_CONTEXT:].copy()
            probs.append(prob)
        self._pending = x[n_windows * WINDOW :].copy()
        self.windows += n_windows
        return probs

    async def process(self, samples: np.ndarray) -> list[float]:
        """:meth:`feed` as a REALTIME job of the engine's scheduler. Calls for one stream must not
        overlap. Raises QueueFull / EngineClosed."""

        def produce(control: JobControl) -> list[list[float]]:
            return [self.feed(samples)]

        async with self._engine.scheduler.submit(produce, priority=Priority.REALTIME) as job:
            async for probabilities in job:
                return probabilities
        raise RuntimeError("the VAD job ended without a result")  # cancelled: not reached
