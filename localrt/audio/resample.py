"""Sample-rate conversion with soxr (one-shot and streaming).

Input may be float32 (in [-1, 1]) or int16; the output has the input's dtype. Mono only: every audio
path in the server is mono by the time it gets here (decoders downmix first).
"""

from __future__ import annotations

import numpy as np
import soxr

_DTYPES = (np.dtype(np.float32), np.dtype(np.int16))


def _check(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {x.shape}")
    if x.dtype not in _DTYPES:
        x = x.astype(np.float32)
    return x


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole mono signal; returns the input unchanged when the rates match."""
    x = _check(samples)
    if in_rate == out_rate or x.size == 0:
        return x
    out: np.ndarray = soxr.resample(x, in_rate, out_rate, quality="HQ")
    return out


class StreamResampler:
    """Resamples a stream chunk by chunk with the filter state carried across chunks.

    The concatenated output of ``process`` over all chunks (the last one with ``last=True``) matches a
    one-shot :func:`resample` of the whole signal, up to soxr's rounding. soxr holds back a few
    milliseconds of filter delay until ``last=True`` flushes it. The dtype is fixed by ``dtype`` (chunks
    of another dtype are converted), so a float32 resampler never sees int16 and vice versa.
    """

    def __init__(
        self, in_rate: int, out_rate: int, *, dtype: type[np.floating] | type[np.integer] = np.float32
    ):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype}; use float32 or int16")
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype=self.dtype.name, quality="HQ")

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(chunk)
        if x.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {x.shape}")
        if x.dtype != self.dtype:
            if self.dtype == np.int16 and x.dtype.kind == "f":
                x = np.clip(np.rint(x * 32768.0), -32768, 32767)
            elif self.dtype == np.float32 and x.dtype == np.int16:
                x = x / 32768.0
            x = x.astype(self.dtype)
        if self._stream is None:
            return x
        out: np.ndarray = self._stream.resample_chunk(np.ascontiguousarray(x), last=last)
        return out

    def reset(self) -> None:
        """Forget the carried state (for example after a realtime buffer is cleared)."""
        if self._stream is not None:
            self._stream.clear()
