"""Conversions between the PCM shapes the server passes around.

Inside the server audio is either ``float32`` in [-1, 1] (what Whisper and the resampler want) or
``int16`` (what Piper, the wire formats and G.711 use). On the wire PCM is little-endian signed 16-bit,
often base64-encoded (realtime ``input_audio_buffer.append`` / ``response.output_audio.delta``).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from localrt.errors import InvalidRequest

_INT16_SCALE = 32768.0


def int16_to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1)."""
    out: np.ndarray = np.asarray(samples, dtype=np.int16).astype(np.float32) / _INT16_SCALE
    return out


def float32_to_int16(samples: np.ndarray) -> np.ndarray:
    """float -> int16, clipping anything outside [-1, 1] instead of wrapping around."""
    scaled = np.asarray(samples, dtype=np.float32) * _INT16_SCALE
    out: np.ndarray = np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
    return out


def bytes_to_int16(data: bytes, *, param: str | None = None) -> np.ndarray:
    """Little-endian s16 bytes -> int16 array (a copy, so the result is writable)."""
    if len(data) % 2:
        raise InvalidRequest(
            f"16-bit PCM audio must have an even number of bytes, got {len(data)}.", param=param
        )
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def int16_to_bytes(samples: np.ndarray) -> bytes:
    """int16 array -> little-endian s16 bytes."""
    return np.asarray(samples, dtype=np.int16).astype("<i2", copy=False).tobytes()


def b64_to_bytes(data: str, *, param: str | None = None) -> bytes:
    """Strict base64 decoding; malformed input is the client's error."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"Invalid base64 audio: {exc}", param=param) from exc


def b64_to_int16(data: str, *, param: str | None = None) -> np.ndarray:
    """base64 of little-endian s16 -> int16 array."""
    return bytes_to_int16(b64_to_bytes(data, param=param), param=param)


def int16_to_b64(samples: np.ndarray) -> str:
    """int16 array -> base64 of little-endian s16."""
    return base64.b64encode(int16_to_bytes(samples)).decode("ascii")


def b64_to_float32(data: str, *, param: str | None = None) -> np.ndarray:
    """base64 of little-endian s16 -> float32 in [-1, 1)."""
    return int16_to_float32(b64_to_int16(data, param=param))


def float32_to_b64(samples: np.ndarray) -> str:
    """float32 in [-1, 1] -> base64 of little-endian s16."""
    return int16_to_b64(float32_to_int16(samples))
