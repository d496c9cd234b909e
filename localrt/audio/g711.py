"""G.711 mu-law and A-law, vectorised with numpy.

Bit-exact with the ITU/Sun reference (and with the deprecated stdlib ``audioop``, which we avoid: it
warns on import and is gone in Python 3.13). Encoders take int16 and return uint8 codes; decoders take
bytes or uint8 codes and return int16. Both laws are 8 kHz in the realtime API (``audio/pcmu``,
``audio/pcma``); resampling is the caller's job.
"""

from __future__ import annotations

import numpy as np

_SEG_SHIFT = 4
_QUANT_MASK = 0x0F
_SEG_MASK = 0x70
_SIGN_BIT = 0x80

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in the 14-bit domain
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _as_codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return np.frombuffer(bytes(data), dtype=np.uint8)


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> mu-law codes (uint8)."""
    pcm = np.asarray(samples, dtype=np.int16).astype(np.int32) >> 2  # 14-bit domain
    negative = pcm < 0
    mag = np.minimum(np.where(negative, -pcm, pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    mask = np.where(negative, 0x7F, 0xFF)
    seg = np.searchsorted(_SEG_UEND, mag, side="left")
    code = (np.minimum(seg, 7) << _SEG_SHIFT) | ((mag >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def ulaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """mu-law codes -> int16 PCM."""
    u = (~_as_codes(data)).astype(np.int32) & 0xFF
    t = (((u & _QUANT_MASK) << 3) + _ULAW_BIAS) << ((u & _SEG_MASK) >> _SEG_SHIFT)
    return np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> A-law codes (uint8)."""
    pcm = np.asarray(samples, dtype=np.int16).astype(np.int32) >> 3  # 13-bit domain
    negative = pcm < 0
    mag = np.where(negative, -pcm - 1, pcm)
    mask = np.where(negative, 0x55, 0xD5)
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (np.minimum(seg, 7) << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def alaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A-law codes -> int16 PCM."""
    a = _as_codes(data).astype(np.int32) ^ 0x55
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = (a & _QUANT_MASK) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & _SIGN_BIT, t, -t).astype(np.int16)
