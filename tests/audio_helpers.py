"""Shared helpers for the speech tests: word error rate and PyAV-made input files (nothing committed)."""

from __future__ import annotations

import io
import re

import av
import jiwer
import numpy as np

from localrt.audio.resample import resample
from localrt.serving import serve_in_thread

# Container and codec PyAV uses to write each input format a client might upload.
CONTAINERS: dict[str, tuple[str, str]] = {
    "wav": ("wav", "pcm_s16le"),
    "mp3": ("mp3", "libmp3lame"),
    "flac": ("flac", "flac"),
    "ogg": ("ogg", "libopus"),
    "webm": ("webm", "libopus"),
    "m4a": ("ipod", "aac"),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).strip()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, ignoring case and punctuation."""
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>"))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate, ignoring case and punctuation: for short replies heard through a narrow
    codec, where one misheard sound ("the sky" -> "this guy") costs two of five words."""
    return float(jiwer.cer(normalize(reference), normalize(hypothesis) or "<empty>"))


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def encode_file(
    samples: np.ndarray, rate: int, fmt: str, channels: int = 1, src_rate: int | None = None
) -> bytes:
    """float32 mono ``samples`` (at ``src_rate``, default ``rate``) written as a ``fmt`` file at ``rate``
    with ``channels`` channels (the left channel carries the signal, the right a quieter copy)."""
    if src_rate is not None and src_rate != rate:
        samples = resample(samples, src_rate, rate)
    container, codec = CONTAINERS[fmt]
    codec_rate = rate
    if codec == "libopus" and rate not in _OPUS_RATES:
        codec_rate = 48000  # opus only runs at its own rates; the file still says where it came from
        samples = resample(samples, rate, codec_rate)
    planes = np.stack([samples] + [samples * 0.5] * (channels - 1)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=codec_rate, layout="stereo" if channels == 2 else "mono")
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=stream.layout.name)
        frame.sample_rate = codec_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


serve = serve_in_thread  # uvicorn on a free loopback port in a thread; yields the base URL
