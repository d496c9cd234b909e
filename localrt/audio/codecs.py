"""Decoding uploads and encoding speech, through PyAV (FFmpeg).

``decode`` turns any container/codec FFmpeg understands (wav, mp3, flac, ogg/opus, webm, m4a, ...) at
any rate and channel count into float32 mono at the rate Whisper wants: PyAV converts to planar float,
the channels are averaged (a plain mean cannot clip, unlike FFmpeg's -3 dB downmix), soxr resamples.

``AudioEncoder`` turns int16 speech into one of OpenAI's ``response_format`` values chunk by chunk, so
``/v1/audio/speech`` can send bytes as sentences are synthesized; ``encode`` is the one-shot form of the
same code path (so streamed and non-streamed output are byte-for-byte the same audio). Every format is
produced at 24 kHz mono like OpenAI's; ``pcm`` is raw little-endian s16 at 24 kHz.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Literal, cast, get_args

import av
import numpy as np

from localrt.audio.pcm import int16_to_bytes
from localrt.audio.resample import StreamResampler, resample
from localrt.errors import InvalidRequest

logger = logging.getLogger(__name__)

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[str, ...] = get_args(SpeechFormat)
OUTPUT_RATE = 24_000

MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


@dataclass(frozen=True)
class _Muxing:
    container: str
    codec: str
    bit_rate: int | None = None
    options: tuple[tuple[str, str], ...] = ()


_MUXING: dict[str, _Muxing] = {
    "mp3": _Muxing("mp3", "libmp3lame", 64_000),
    # Ogg's default is a page per second; 100 ms pages let streamed opus leave with each sentence.
    "opus": _Muxing("ogg", "libopus", 32_000, (("page_duration", "100000"),)),
    "aac": _Muxing("adts", "aac", 64_000),
    "flac": _Muxing("flac", "flac"),
    "wav": _Muxing("wav", "pcm_s16le"),
}


def decode(data: bytes, sample_rate: int = 16_000, *, max_duration: float | None = None) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sample_rate``.

    Raises ``InvalidRequest(param="file")`` for empty input, input FFmpeg cannot read, input with no
    audio stream or no decodable audio, and audio longer than ``max_duration`` seconds (a guard against
    tiny, highly compressed uploads that would expand to gigabytes).
    """
    if not data:
        raise InvalidRequest("The audio file is empty.", param="file")
    runs: list[np.ndarray] = []  # float32 at sample_rate
    pending: list[np.ndarray] = []  # float32 at pending_rate, not yet resampled
    pending_rate = 0
    total = 0.0
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise InvalidRequest(
            f"The audio file could not be decoded or its format is not supported ({_reason(exc)}). "
            "Supported formats include wav, mp3, flac, ogg/opus, webm and m4a.",
            param="file",
        ) from exc
    with container:
        if not container.streams.audio:
            raise InvalidRequest("The file contains no audio stream.", param="file")
        to_float = av.AudioResampler(format="fltp")
        try:
            for frame in container.decode(audio=0):
                if frame.sample_rate != pending_rate and pending:
                    runs.append(resample(np.concatenate(pending), pending_rate, sample_rate))
                    pending = []
                if frame.sample_rate != pending_rate:
                    pending_rate = frame.sample_rate
                    to_float = av.AudioResampler(format="fltp")
                pending.extend(_mono(f) for f in to_float.resample(frame))
                total += frame.samples / frame.sample_rate
                if max_duration is not None and total > max_duration:
                    raise InvalidRequest(
                        f"The audio is longer than the maximum of {max_duration:.0f} seconds.",
                        param="file",
                    )
            pending.extend(_mono(f) for f in to_float.resample(None))
        except (av.FFmpegError, ValueError, EOFError) as exc:
            # A truncated or partly corrupt file: keep what decoded, as FFmpeg's CLI would.
            if not pending and not runs:
                raise InvalidRequest(
                    f"The audio file could not be decoded ({_reason(exc)}).", param="file"
                ) from exc
            logger.info("audio decoding stopped early: %s", exc)
    if pending:
        runs.append(resample(np.concatenate(pending), pending_rate, sample_rate))
    audio = np.concatenate(runs).astype(np.float32, copy=False) if runs else np.zeros(0, np.float32)
    if audio.size == 0:
        raise InvalidRequest("The audio file contains no audio samples.", param="file")
    return np.clip(audio, -1.0, 1.0)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).lower()


def _mono(frame: av.AudioFrame) -> np.ndarray:
    planes = frame.to_ndarray()  # (channels, samples) for planar formats
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]


def check_format(fmt: str, *, param: str = "response_format") -> SpeechFormat:
    """Validate a speech ``response_format``; the error names the supported ones."""
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequest(
            f"Unsupported response_format '{fmt}'. Supported: {', '.join(SPEECH_FORMATS)}.", param=param
        )
    return fmt  # type: ignore[return-value]


class _Sink:
    """A write-only, non-seekable file for PyAV: the muxer writes streaming-friendly headers
    (for wav, 0xFFFFFFFF sizes, as OpenAI's streamed wav has) and we hand out bytes as they come."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class AudioEncoder:
    """Streaming encoder: int16 mono chunks at ``sample_rate`` in, encoded ``fmt`` bytes out.

    ``write`` returns whatever bytes the muxer has produced so far (possibly none: codecs work in
    frames, e.g. 1152 samples for mp3); ``close`` flushes the rest. Not thread-safe; calls may come
    from different threads one at a time.
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.format: SpeechFormat = check_format(fmt)
        self.media_type = MEDIA_TYPES[self.format]
        self._resampler = StreamResampler(sample_rate, OUTPUT_RATE, dtype=np.int16)
        self._closed = False
        self._sink: _Sink | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        self._pts = 0
        if self.format != "pcm":
            muxing = _MUXING[self.format]
            self._sink = _Sink()
            self._container = av.open(
                self._sink,
                mode="w",
                format=muxing.container,
                buffer_size=4096,
                container_options={"flush_packets": "1", **dict(muxing.options)},
            )
            stream = cast(
                av.AudioStream, self._container.add_stream(muxing.codec, rate=OUTPUT_RATE, layout="mono")
            )
            if muxing.bit_rate:
                stream.codec_context.bit_rate = muxing.bit_rate
            self._stream = stream

    def write(self, samples: np.ndarray) -> bytes:
        if self._closed:
            raise RuntimeError("encoder is closed")
        return self._encode(self._resampler.process(np.asarray(samples, dtype=np.int16)))

    def close(self) -> bytes:
        """Flush the resampler, the codec and the muxer; returns the final bytes."""
        if self._closed:
            return b""
        out = self._encode(self._resampler.process(np.zeros(0, np.int16), last=True))
        self._closed = True
        if self._container is None or self._stream is None or self._sink is None:
            return out
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return out + self._sink.take()

    def _encode(self, samples: np.ndarray) -> bytes:
        if self._stream is None or self._container is None or self._sink is None:
            return int16_to_bytes(samples)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = OUTPUT_RATE
            frame.pts = self._pts
            self._pts += samples.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode a whole int16 mono signal to ``fmt`` (24 kHz mono)."""
    encoder = AudioEncoder(fmt, sample_rate)
    return encoder.write(samples) + encoder.close()
