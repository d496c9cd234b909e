"""The input buffer: positions in 16 kHz samples, chunked storage, commit, clear, trim."""

from __future__ import annotations

import numpy as np

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
