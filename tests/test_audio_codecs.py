"""PyAV decoding of uploads and encoding of speech output (no models needed)."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
from audio_helpers import CONTAINERS, dominant_freq, encode_file, tone

from localrt.audio import codecs
from localrt.errors import InvalidRequest

PADDING_S = {
    "wav": 0.001,
    "flac": 0.001,
    "mp3": 0.1,
    "ogg": 0.03,
    "webm": 0.03,
    "m4a": 0.3,
    "aac": 0.1,
    "opus": 0.03,
}


@pytest.mark.parametrize("fmt", list(CONTAINERS))
@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2), (44100, 2), (48000, 1)])
def test_decode_any_format_rate_and_channels(fmt: str, rate: int, channels: int) -> None:
    data = encode_file(tone(440, 1.0, rate), rate, fmt, channels)
    audio = codecs.decode(data, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossy codecs add priming and pad the last frame (AAC frames are 128 ms at 8 kHz).
    assert abs(len(audio) - 16000) < PADDING_S[fmt] * 16000
    assert abs(dominant_freq(audio, 16000) - 440) < 3
    # Stereo is averaged (left 0.3, right 0.15 -> ~0.225), never clipped.
    amplitude = np.sqrt(2 * np.mean(audio[4000:-4000] ** 2))
    assert abs(amplitude - (0.3 if channels == 1 else 0.225)) < 0.03


def test_decode_to_other_rates() -> None:
    data = encode_file(tone(440, 0.5, 48000), 48000, "wav")
    assert len(codecs.decode(data, 24000)) == 12000
    assert len(codecs.decode(data, 48000)) == 24000


@pytest.mark.parametrize(
    "data",
    [b"", b"definitely not audio" * 50, b"RIFF\x00\x00\x00\x00WAVE", b"\x00" * 4096],
    ids=["empty", "text", "truncated-header", "zeros"],
)
def test_decode_rejects_undecodable(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        codecs.decode(data)
    assert info.value.param == "file" and info.value.status == 400


def test_decode_rejects_file_without_audio() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=1)
        stream.width, stream.height = 32, 32
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(InvalidRequest, match="no audio"):
        codecs.decode(buf.getvalue())


def test_decode_keeps_what_a_truncated_file_holds() -> None:
    data = encode_file(tone(440, 2.0, 16000), 16000, "mp3")
    audio = codecs.decode(data[: len(data) // 2])
    assert 0.6 * 16000 < len(audio) < 1.4 * 16000


def test_decode_duration_cap() -> None:
    data = encode_file(tone(440, 2.0, 16000), 16000, "flac")
    with pytest.raises(InvalidRequest, match="longer than"):
        codecs.decode(data, max_duration=1.0)


SPEECH = (tone(300, 1.5, 22050) * 32767).astype(np.int16)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_encode_formats_decode_back(fmt: str) -> None:
    data = codecs.encode(SPEECH, 22050, fmt)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1
        assert stream.rate in (24000, 48000)  # opus always decodes at 48 kHz
    audio = codecs.decode(data, 24000)
    assert abs(len(audio) - 1.5 * 24000) <= PADDING_S[fmt] * 24000
    assert abs(dominant_freq(audio, 24000) - 300) < 3


def test_pcm_is_raw_24khz_s16le() -> None:
    data = codecs.encode(SPEECH, 22050, "pcm")
    samples = np.frombuffer(data, "<i2")
    assert len(samples) == round(1.5 * 24000)
    assert abs(dominant_freq(samples.astype(np.float32), 24000) - 300) < 3


def test_wav_is_readable_by_the_stdlib() -> None:
    data = codecs.encode(SPEECH, 22050, "wav")
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert len(wav.readframes(10**9)) == 2 * round(1.5 * 24000)


@pytest.mark.parametrize("fmt", codecs.SPEECH_FORMATS)
def test_streaming_encoder_emits_early_and_matches_one_shot_length(fmt: str) -> None:
    encoder = codecs.AudioEncoder(fmt, 22050)
    assert encoder.media_type == codecs.MEDIA_TYPES[fmt]
    sentences = np.array_split(SPEECH, 3)
    parts = [encoder.write(s) for s in sentences]
    parts.append(encoder.close())
    assert encoder.close() == b""  # closing twice is harmless
    assert parts[0], "the first sentence's bytes must not wait for the end"
    streamed = b"".join(parts)
    whole = codecs.encode(SPEECH, 22050, fmt)
    if fmt == "pcm":
        assert len(streamed) == len(whole)
    else:
        assert len(codecs.decode(streamed, 24000)) == len(codecs.decode(whole, 24000))


def test_unsupported_format_names_the_supported_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        codecs.AudioEncoder("ogg", 22050)
    assert info.value.param == "response_format"
    assert all(f in info.value.message for f in codecs.SPEECH_FORMATS)
