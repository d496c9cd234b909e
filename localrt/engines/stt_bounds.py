"""Bounding what one Whisper job costs in time after its client leaves, and in memory.

faster-whisper decodes a 30 s window at a time, and each window is several native calls: the encoder,
then one ``generate`` per temperature of the fallback schedule (up to six when the audio makes Whisper
hallucinate, as noise does), then ``align`` for word timestamps. It yields a window's segments only
when the window is done (none at all for a window it skips as silence), so a stop flag checked between
segments leaves a vanished client's job running for seconds. Three bounds, installed on a loaded
``WhisperModel`` by :func:`bound`:

- :class:`StopSignal` is checked before every native call (and between blocks of the features), so a
  stopped job ends within one call: one encoder pass or one ``generate``. When the job's stop event is
  a scheduler's :class:`~localrt.engines.scheduler.JobControl`, the same points are preemption points:
  waiting jobs of a higher priority run there first, nested in the same thread.
- :func:`max_new_tokens` caps one ``generate`` at what OpenAI's reference implementation decodes per
  window (``n_text_ctx // 2``, 224 tokens; faster-whisper allows up to 448 minus the prompt). A window
  cut short is not lost: decoding resumes at its last complete segment.
- :class:`BlockwiseFeatures` computes the log-mel spectrogram in blocks: faster-whisper's does the
  whole STFT at once (about 0.8 GB per 1,000 s of audio, uninterruptible for seconds); this holds a
  padded copy of the input, the output (80 floats per 10 ms) and one 100 s block (about 0.2 GB per
  1,000 s in all), and checks the stop signal between blocks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from localrt.engines.scheduler import JobControl


def max_new_tokens(model: Any) -> int:
    """Tokens one ``generate`` may add for ``model`` (a ``WhisperModel``; its context is 448 tokens).

    faster-whisper's prompt is at most 1 + (448 // 2 - 1) tokens of previous text plus 3 start
    tokens: 227. Leaving 220 keeps prompt + generation within the context (faster-whisper raises
    otherwise) and is within 4 tokens of the reference's 224.
    """
    return int(getattr(model, "max_length", 448)) // 2 - 4


class Stopped(Exception):
    """Raised inside the worker when the job's stop event is set; the producer ends quietly."""


class StopSignal:
    """The stop event of the job running on the current thread.

    A worker thread runs one job at a time, but a job may run nested inside another one's suspended
    generator (a scheduler's preemption), so ``watching`` restores the enclosing job's event when the
    nested job ends: the jobs on one thread form a stack."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def watching(self, stop: threading.Event) -> Iterator[None]:
        previous: threading.Event | None = getattr(self._local, "stop", None)
        self._local.stop = stop
        try:
            yield
        finally:
            self._local.stop = previous

    def check(self) -> None:
        """Raise Stopped if the current job was stopped; first run the waiting higher-priority jobs
        when the job can yield (they run nested here, and may take a while)."""
        stop: threading.Event | None = getattr(self._local, "stop", None)
        if stop is None:
            return
        if isinstance(stop, JobControl) and not stop.is_set() and stop.should_yield():
            stop.yield_now()
        if stop.is_set():
            raise Stopped


class _StopBetweenCalls:
    """The CTranslate2 Whisper model, checking the stop signal before each native call."""

    def __init__(self, inner: Any, signal: StopSignal) -> None:
        self._inner = inner
        self._signal = signal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self._signal.check()
        return self._inner.encode(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self._signal.check()
        return self._inner.generate(*args, **kwargs)

    def detect_language(self, *args: Any, **kwargs: Any) -> Any:
        self._signal.check()
        return self._inner.detect_language(*args, **kwargs)

    def align(self, *args: Any, **kwargs: Any) -> Any:
        self._signal.check()
        return self._inner.align(*args, **kwargs)


class BlockwiseFeatures:
    """faster-whisper's log-mel spectrogram (its ``FeatureExtractor``, wrapped), computed
    ``block_frames`` frames at a time.

    Same result as the wrapped extractor (up to float rounding in the mel product): a reflect-padded
    STFT with a periodic Hann window, power spectrum, mel filters, log10, clamped to 8 below the
    maximum. Short inputs (under two blocks) go to the wrapped extractor unchanged.
    """

    def __init__(self, inner: Any, signal: StopSignal | None = None, block_frames: int = 10_000) -> None:
        self._inner = inner
        self.signal = signal
        self.block_frames = block_frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(
        self, waveform: np.ndarray, padding: int = 160, chunk_length: int | None = None
    ) -> np.ndarray:
        inner = self._inner
        if waveform.ndim != 1 or waveform.shape[0] + padding < 2 * self.block_frames * inner.hop_length:
            whole: np.ndarray = inner(waveform, padding=padding, chunk_length=chunk_length)
            return whole
        if chunk_length is not None:
            inner.n_samples = chunk_length * inner.sampling_rate
            inner.nb_max_frames = inner.n_samples // inner.hop_length
        n_fft, hop, half = inner.n_fft, inner.hop_length, inner.n_fft // 2
        n = waveform.shape[0] + padding
        # The signal zero-padded by `padding`, then reflect-padded by n_fft // 2 on both sides (numpy's
        # "reflect": the edge sample is not repeated), built in one buffer.
        padded = np.zeros(n + 2 * half, np.float32)
        padded[half : half + waveform.shape[0]] = waveform
        padded[:half] = padded[2 * half : half : -1]
        padded[half + n :] = padded[half + n - 2 : n - 2 : -1]
        frames = np.lib.stride_tricks.as_strided(
            padded, (1 + n // hop, n_fft), (hop * padded.strides[0], padded.strides[0]), writeable=False
        )
        total = n // hop  # the last STFT frame is dropped, as in the original
        window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
        filters = np.ascontiguousarray(inner.mel_filters.T)  # (freqs, mels): a fast product per block
        out = np.empty((inner.mel_filters.shape[0], total), np.float32)
        for start in range(0, total, self.block_frames):
            if self.signal is not None:
                self.signal.check()
            stop = min(total, start + self.block_frames)
            spectrum = np.fft.rfft(frames[start:stop] * window, n=n_fft, axis=-1)
            power = np.abs(spectrum.astype(np.complex64, copy=False)) ** 2
            mel = power @ filters
            np.log10(np.clip(mel, 1e-10, None), out=mel)
            out[:, start:stop] = mel.T
        np.maximum(out, out.max() - 8.0, out=out)
        out += 4.0
        out /= 4.0
        return out


def bound(model: Any, signal: StopSignal) -> None:
    """Install the stop checks and the blockwise features on a loaded faster-whisper ``WhisperModel``."""
    model.model = _StopBetweenCalls(model.model, signal)
    model.feature_extractor = BlockwiseFeatures(model.feature_extractor, signal)
