"""soxr resampling, one-shot and streaming."""

from __future__ import annotations

import numpy as np
import pytest
from audio_helpers import dominant_freq, tone

from localrt.audio.resample import StreamResampler, resample


@pytest.mark.parametrize(("src", "dst"), [(16000, 24000), (24000, 16000), (44100, 16000), (8000, 48000)])
def test_resample_keeps_pitch_and_duration(src: int, dst: int) -> None:
    x = tone(440, 1.0, src)
    y = resample(x, src, dst)
    assert y.dtype == np.float32
    assert abs(len(y) - dst) <= 1
    assert abs(dominant_freq(y, dst) - 440) < 2


def test_same_rate_is_identity() -> None:
    x = tone(440, 0.1, 16000)
    assert resample(x, 16000, 16000) is x
    stream = StreamResampler(16000, 16000)
    assert np.array_equal(stream.process(x), x)


@pytest.mark.parametrize("chunk", [160, 441, 4000])
def test_streaming_matches_one_shot(chunk: int) -> None:
    x = tone(300, 1.0, 22050) + tone(1000, 1.0, 22050, 0.1)
    whole = resample(x, 22050, 24000)
    stream = StreamResampler(22050, 24000)
    parts = [stream.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(stream.process(np.zeros(0, np.float32), last=True))
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)
    assert np.max(np.abs(streamed - whole)) < 1e-3


def test_int16_stream() -> None:
    x = (tone(440, 0.5, 24000) * 32767).astype(np.int16)
    stream = StreamResampler(24000, 16000, dtype=np.int16)
    out = np.concatenate([stream.process(x[:5000]), stream.process(x[5000:], last=True)])
    assert out.dtype == np.int16
    assert abs(len(out) - 8000) <= 1
    # float chunks fed to an int16 resampler are converted, not misread
    stream2 = StreamResampler(24000, 16000, dtype=np.int16)
    out2 = stream2.process(x.astype(np.float32) / 32768, last=True)
    assert out2.dtype == np.int16 and np.max(np.abs(out2.astype(np.int32) - out)) <= 2


def test_reset_forgets_state() -> None:
    stream = StreamResampler(48000, 16000)
    stream.process(tone(440, 0.2, 48000))
    stream.reset()
    silence = stream.process(np.zeros(4800, np.float32), last=True)
    assert np.max(np.abs(silence)) < 1e-6


def test_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((2, 100), np.float32), 16000, 8000)
    with pytest.raises(ValueError, match="mono"):
        StreamResampler(16000, 8000).process(np.zeros((100, 2), np.float32))
