"""The input buffer: positions in 16 kHz samples, chunked storage, commit, clear, trim."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from localrt.errors import APIError
from localrt.realtime import formats
from localrt.realtime.input_audio import InputAudio


def test_positions_and_commit() -> None:
    buf = InputAudio(formats.PCM16)
    for _ in range(10):
        buf.append(np.full(2400, 1000, np.int16))  # 100 ms at 24 kHz
    assert buf.buffered_ms == 1000
    buf.flush()
    assert buf.end == 16000
    audio = buf.take(buf.buffer_start, buf.end)
    assert audio.size == 16000 and abs(float(audio[8000]) - 1000 / 32768) < 1e-3
    assert buf.buffered_ms == 0 and buf.buffer_start == 16000


def test_slices_span_chunks_and_trim_forgets() -> None:
    buf = InputAudio(formats.PCM16)
    for i in range(5):
        buf.append(np.full(2400, i * 1000, np.int16))
    buf.flush()
    whole = buf.slice(0, buf.end)
    np.testing.assert_array_equal(buf.slice(1000, 5000), whole[1000:5000])
    buf.trim(6000)
    part = buf.slice(0, buf.end)
    assert 0 < part.size < whole.size
    np.testing.assert_array_equal(part, whole[-part.size :])


def test_g711_input_is_8khz() -> None:
    buf = InputAudio(formats.G711_ULAW)
    new = buf.append(np.zeros(800, np.int16))  # 100 ms at 8 kHz
    assert buf.buffered_ms == 100
    assert new.size + buf.flush().size == 1600


def test_clear_empties_the_buffer() -> None:
    buf = InputAudio(formats.PCM16)
    buf.append(np.zeros(4800, np.int16))
    buf.clear()
    assert buf.buffered_ms == 0 and buf.buffer_start == buf.end


@pytest.mark.parametrize("fmt", [formats.PCM16, formats.G711_ULAW, formats.G711_ALAW])
@pytest.mark.parametrize(
    "n", [0, 1, 2, 3, formats.PIECE_SAMPLES - 1, formats.PIECE_SAMPLES, 2 * formats.PIECE_SAMPLES + 5]
)
def test_base64_is_decoded_in_pieces_exactly_as_whole(fmt: formats.AudioFormat, n: int) -> None:
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, n * fmt.bytes_per_sample, dtype=np.uint8).tobytes()
    pieces = list(fmt.decode_chunks(base64.b64encode(data).decode()))
    assert all(p.size == formats.PIECE_SAMPLES for p in pieces[:-1])
    whole = np.frombuffer(data, "<i2") if fmt is formats.PCM16 else fmt._decode(data)
    joined = np.concatenate([np.zeros(0, np.int16), *pieces])
    np.testing.assert_array_equal(joined, whole)


@pytest.mark.parametrize(
    "bad",
    [
        "AAA",  # not a multiple of 4
        "AA=A",
        "@@@@",
        "AAA=" * (formats.PIECE_SAMPLES * 2 // 3 + 1),  # padding at the end of a piece, not of the data
        "AAAA" * (formats.PIECE_SAMPLES * 2 // 3) + "A===",
    ],
)
def test_bad_base64_anywhere_yields_no_audio(bad: str) -> None:
    pieces = formats.PCM16.decode_chunks(bad, param="audio")
    with pytest.raises(APIError) as info:
        next(pieces)  # checked whole before the first piece: nothing is appended
    assert info.value.param == "audio"
