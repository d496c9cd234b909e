"""int16 <-> float32 <-> bytes <-> base64 helpers."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from localrt.audio import pcm
from localrt.errors import InvalidRequest


def test_int16_float32_round_trip() -> None:
    x = np.array([-32768, -1, 0, 1, 16384, 32767], dtype=np.int16)
    f = pcm.int16_to_float32(x)
    assert f.dtype == np.float32
    assert f.min() == -1.0 and f.max() < 1.0
    assert np.array_equal(pcm.float32_to_int16(f), x)


def test_float32_to_int16_clips_instead_of_wrapping() -> None:
    out = pcm.float32_to_int16(np.array([-3.0, -1.0, 1.0, 2.5], dtype=np.float32))
    assert out.tolist() == [-32768, -32768, 32767, 32767]


def test_bytes_are_little_endian() -> None:
    assert pcm.int16_to_bytes(np.array([1, -2], dtype=np.int16)) == b"\x01\x00\xfe\xff"
    assert pcm.bytes_to_int16(b"\x01\x00\xfe\xff").tolist() == [1, -2]


def test_base64_round_trip() -> None:
    x = (np.sin(np.arange(480) / 7) * 20000).astype(np.int16)
    b64 = pcm.int16_to_b64(x)
    assert base64.b64decode(b64) == x.tobytes()
    assert np.array_equal(pcm.b64_to_int16(b64), x)
    assert np.allclose(pcm.b64_to_float32(pcm.float32_to_b64(x / 32768)), x / 32768, atol=1 / 32768)


def test_bad_input_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as odd:
        pcm.bytes_to_int16(b"\x00\x01\x02", param="audio")
    assert odd.value.param == "audio"
    with pytest.raises(InvalidRequest) as bad:
        pcm.b64_to_int16("not base64!", param="audio")
    assert bad.value.param == "audio" and bad.value.status == 400
