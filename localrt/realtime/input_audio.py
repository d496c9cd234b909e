"""The session's input audio: every append decoded once, resampled once to 16 kHz, kept in chunks.

Positions are absolute sample counts at 16 kHz since the session began (``ms = position / 16``), which is
what ``audio_start_ms`` / ``audio_end_ms`` report. Appends are stored as a list of chunks (no per-append
copy of the whole buffer); audio before the uncommitted buffer's start is dropped, and while server VAD
is waiting for speech the buffer is trimmed to the prefix padding it may need, so memory stays bounded
no matter how long the client streams silence. Stored audio is int16 (the wire's own precision, half the
memory of float32): :attr:`held_bytes` is what the session's ``realtime_max_buffer_bytes`` caps.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from localrt.audio.pcm import float32_to_int16, int16_to_float32
from localrt.audio.resample import StreamResampler
from localrt.realtime.formats import AudioFormat

RATE = 16000
SAMPLES_PER_MS = RATE // 1000


class InputAudio:
    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = StreamResampler(fmt.rate, RATE, dtype=np.float32)
        self._chunks: deque[np.ndarray] = deque()
        self._chunks_start = 0  # absolute position of the first stored sample
        self.end = 0  # absolute position after the last sample produced so far
        self.buffer_start = 0  # where the uncommitted input buffer begins
        self._pending_in = 0  # input-rate samples appended since buffer_start (exact, for the 100 ms rule)

    # --- writing ------------------------------------------------------------------------------------------
    def set_format(self, fmt: AudioFormat) -> None:
        if fmt.rate != self.format.rate:
            self._store(self._resampler.process(np.zeros(0, np.float32), last=True))
            self._resampler = StreamResampler(fmt.rate, RATE, dtype=np.float32)
        self.format = fmt

    def append(self, samples: np.ndarray) -> np.ndarray:
        """Add int16 samples at the input format's rate; return the new 16 kHz float32 samples."""
        self._pending_in += samples.size
        return self._store(self._resampler.process(int16_to_float32(samples)))

    def flush(self) -> np.ndarray:
        """Push out what the resampler holds back (before a manual commit); returns those samples."""
        out = self._store(self._resampler.process(np.zeros(0, np.float32), last=True))
        self._resampler = StreamResampler(self.format.rate, RATE, dtype=np.float32)
        return out

    def _store(self, x: np.ndarray) -> np.ndarray:
        if x.size:
            self._chunks.append(float32_to_int16(x))
            self.end += x.size
        return x

    # --- reading ------------------------------------------------------------------------------------------
    @property
    def held_bytes(self) -> int:
        """The uncommitted audio this buffer holds, as 16 kHz pcm16 bytes."""
        return 2 * max(0, self.end - max(self.buffer_start, self._chunks_start))

    def bytes_after(self, n_in: int) -> int:
        """:attr:`held_bytes` once ``n_in`` more input-rate samples are appended (rounded up)."""
        return self.held_bytes + 2 * -(-n_in * RATE // self.format.rate)

    @property
    def buffered_ms(self) -> float:
        """Input appended since the buffer's start, in ms (counted at the input rate: exact)."""
        return self._pending_in * 1000 / self.format.rate

    def slice(self, start: int, end: int, dtype: type[np.generic] = np.float32) -> np.ndarray:
        """16 kHz samples in [start, end) (clamped to what is still stored), float32 or int16."""
        start = max(start, self._chunks_start)
        end = min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype)
        out = np.empty(end - start, dtype)
        convert = int16_to_float32 if dtype == np.float32 else np.asarray
        pos, filled = self._chunks_start, 0
        for chunk in self._chunks:
            c_end = pos + chunk.size
            if c_end > start and pos < end:
                a, b = max(start, pos), min(end, c_end)
                out[filled : filled + b - a] = convert(chunk[a - pos : b - pos])
                filled += b - a
            pos = c_end
            if pos >= end:
                break
        return out

    def take(self, start: int, end: int, dtype: type[np.generic] = np.float32) -> np.ndarray:
        """The audio [start, end) for a committed item; the buffer then begins at ``end``."""
        audio = self.slice(start, end, dtype)
        self.clear(end)
        return audio

    def clear(self, at: int | None = None) -> None:
        """Empty the uncommitted buffer: it now begins at ``at`` (default: the end of the input)."""
        self.buffer_start = self.end if at is None else at
        self._pending_in = max(0, (self.end - self.buffer_start)) * self.format.rate // RATE
        self.trim(self.buffer_start)

    def trim(self, keep_from: int) -> None:
        """Forget stored audio before ``keep_from`` (whole chunks only)."""
        while self._chunks and self._chunks_start + self._chunks[0].size <= keep_from:
            self._chunks_start += self._chunks.popleft().size
