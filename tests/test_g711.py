"""G.711 mu-law / A-law: bit-exact against the ITU reference (via the deprecated stdlib audioop)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from localrt.audio import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@pytest.fixture(scope="module")
def audioop():  # type: ignore[no-untyped-def]
    if sys.version_info >= (3, 13):
        pytest.skip("audioop was removed in Python 3.13")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


def test_ulaw_matches_reference(audioop) -> None:  # type: ignore[no-untyped-def]
    assert g711.ulaw_encode(ALL_SAMPLES).tobytes() == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)
    assert g711.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_matches_reference(audioop) -> None:  # type: ignore[no-untyped-def]
    assert g711.alaw_encode(ALL_SAMPLES).tobytes() == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)
    assert g711.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


@pytest.mark.parametrize(
    ("encode", "decode"), [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)]
)
def test_round_trip_is_close(encode, decode) -> None:  # type: ignore[no-untyped-def]
    t = np.arange(8000) / 8000
    x = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    codes = encode(x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    y = decode(codes)
    assert y.dtype == np.int16 and y.shape == x.shape
    # 8-bit logarithmic coding: error within a few percent of the amplitude.
    assert np.max(np.abs(y.astype(np.int32) - x)) < 12000 * 0.04
    # Decoding the codes as bytes, bytearray or an array gives the same samples.
    assert np.array_equal(decode(codes.tobytes()), y)
    assert np.array_equal(decode(bytearray(codes.tobytes())), y)


def test_silence_codes() -> None:
    assert g711.ulaw_encode(np.zeros(4, np.int16)).tolist() == [0xFF] * 4
    assert g711.alaw_encode(np.zeros(4, np.int16)).tolist() == [0xD5] * 4
    assert g711.ulaw_decode(b"").size == 0
