"""Decoding uploads and encoding speech, through PyAV (FFmpeg).

``decode`` turns any container/codec FFmpeg understands (wav, mp3, flac, ogg/opus, webm, m4a, ...) at
any rate and channel count into float32 mono at the rate Whisper wants: PyAV converts to packed float,
the channels are averaged (a plain mean cannot clip, unlike FFmpeg's -3 dB downmix), soxr resamples.

``AudioEncoder`` turns int16 speech into one of OpenAI's ``response_format`` values chunk by chunk, so
``/v1/audio/speech`` can send bytes as sentences are synthesized; ``encode`` is the one-shot form of the
same code path (so streamed and non-streamed output are byte-for-byte the same audio). Every format is
produced at 24 kHz mono like OpenAI's; ``pcm`` is raw little-endian s16 at 24 kHz.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from dataclasses import dataclass
from typing import Literal, cast, get_args

import av
import numpy as np

from localrt.audio.pcm import int16_to_bytes
from localrt.audio.resample import StreamResampler
from localrt.errors import InvalidRequest

logger = logging.getLogger(__name__)

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[str, ...] = get_args(SpeechFormat)
OUTPUT_RATE = 24_000

# Decoded frames outside these bounds are refused before they are copied. No real recording needs
# more (FLAC's largest frame is 65535 samples x 8 channels), and together with the duration cap they
# bound what one upload can make the decoder hold.
MIN_INPUT_RATE = 1_000
MAX_INPUT_RATE = 1_536_000  # DSD256 decodes to 1.4 MHz PCM
MAX_FRAME_VALUES = 1 << 22
MAX_CHANNELS = 64  # FFmpeg's resampler's own limit
# Each change of rate, layout or sample format mid-stream costs new converters (about 1 ms): a file
# alternating them every frame would keep a thread busy for minutes. Chained streams change a few times.
MAX_FORMAT_CHANGES = 100

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


def decode(
    data: bytes,
    sample_rate: int = 16_000,
    *,
    max_duration: float | None = None,
    stop: threading.Event | None = None,
) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sample_rate``, streaming: frame by frame, each frame
    is converted to float, averaged to mono and resampled before the next is decoded, so memory is the
    output plus one frame, whatever the source rate, channel count or codec.

    Raises ``InvalidRequest(param="file")`` for empty input, input FFmpeg cannot read, input with no
    audio stream or no decodable audio, frames no real codec produces, and audio longer than
    ``max_duration`` seconds: the decoded duration is counted as frames arrive (a header may lie), and
    decoding stops as soon as it passes the cap, so a tiny, highly compressed upload (a decompression
    bomb) costs at most ``max_duration`` seconds of 16 kHz float32. Setting ``stop`` (from another
    thread) ends decoding at the next frame with what was decoded so far.
    """
    if not data:
        raise InvalidRequest("The audio file is empty.", param="file")
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
        out = _Output(sample_rate, max_duration, _declared_seconds(container))
        decoder = _FrameDecoder(sample_rate)
        seconds = 0.0  # decoded so far, counted from the frames themselves
        try:
            for frame in container.decode(audio=0):
                if stop is not None and stop.is_set():
                    break
                seconds += decoder.check(frame)
                if max_duration is not None and seconds > max_duration:
                    raise _too_long(max_duration)
                out.append(decoder.decode(frame))
            out.append(decoder.flush())
        except (av.FFmpegError, ValueError, EOFError) as exc:
            # A truncated or partly corrupt file: keep what decoded, as FFmpeg's CLI would.
            if not out.size and not decoder.converted:
                raise InvalidRequest(
                    f"The audio file could not be decoded ({_reason(exc)}).", param="file"
                ) from exc
            logger.info("audio decoding stopped early: %s", exc)
            with contextlib.suppress(av.FFmpegError, ValueError):
                out.append(decoder.flush())
    if out.size == 0:
        raise InvalidRequest("The audio file contains no audio samples.", param="file")
    return out.samples()


def _too_long(max_duration: float) -> InvalidRequest:
    return InvalidRequest(
        f"The audio in 'file' is longer than the maximum of {max_duration:.0f} seconds; "
        "split it into shorter files.",
        param="file",
    )


def _declared_seconds(container: av.container.InputContainer) -> float | None:
    """What the header says the duration is: only a hint for sizing the output, never trusted."""
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    return None


class _FrameDecoder:
    """Decoded frames -> float32 mono chunks at ``sample_rate``.

    PyAV converts each frame to packed float, the channels are averaged (a plain mean cannot clip,
    unlike FFmpeg's -3 dB downmix) and soxr's streaming resampler carries its state from frame to
    frame. A change of rate, layout or sample format mid-stream (chained ogg, concatenated mp3) flushes
    the resampler and starts new ones.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.converted = False  # whether any frame made it through the converters
        self._key: tuple[str, str, int] | None = None
        self._changes = 0
        self._to_float: av.AudioResampler | None = None
        self._resampler: StreamResampler | None = None

    def check(self, frame: av.AudioFrame) -> float:
        """Refuse frames no real codec produces (before anything copies them); returns the frame's
        duration in seconds."""
        rate, channels = frame.sample_rate, len(frame.layout.channels)
        if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
            raise InvalidRequest(
                f"The audio in 'file' has an unsupported sample rate of {rate} Hz.", param="file"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise InvalidRequest(
                f"The audio in 'file' has {channels} channels; at most {MAX_CHANNELS} are supported.",
                param="file",
            )
        if frame.samples * channels > MAX_FRAME_VALUES:
            raise InvalidRequest(
                f"The audio in 'file' has an unsupported frame of {frame.samples} samples x "
                f"{channels} channels.",
                param="file",
            )
        return frame.samples / rate

    def decode(self, frame: av.AudioFrame) -> np.ndarray:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self._changes += 1
            if self._changes > MAX_FORMAT_CHANGES:
                raise InvalidRequest(
                    "The audio in 'file' changes its sample rate, channel layout or sample format "
                    f"more than {MAX_FORMAT_CHANGES} times.",
                    param="file",
                )
            head = self.flush()
            self._key = key
            self._to_float = av.AudioResampler(format="flt")
            self._resampler = StreamResampler(frame.sample_rate, self.sample_rate)
            body = self._convert(frame)
            return np.concatenate([head, body]) if head.size else body
        return self._convert(frame)

    def flush(self) -> np.ndarray:
        """What the converters still hold (call at the end, or before a change of input format)."""
        if self._to_float is None or self._resampler is None:
            return np.zeros(0, np.float32)
        tail = [_mono(f) for f in self._to_float.resample(None)]
        mono = np.concatenate(tail) if tail else np.zeros(0, np.float32)
        out = self._resampler.process(mono, last=True)
        self._to_float = self._resampler = None
        self._key = None
        return out

    def _convert(self, frame: av.AudioFrame) -> np.ndarray:
        assert self._to_float is not None and self._resampler is not None
        planes = [_mono(f) for f in self._to_float.resample(frame)]
        mono = planes[0] if len(planes) == 1 else np.concatenate(planes or [np.zeros(0, np.float32)])
        self.converted = True
        return self._resampler.process(mono)


class _Output:
    """The decoded signal, float32 at ``rate``, held in one buffer that never passes the cap.

    The buffer starts at the header's duration (bounded by the cap; only a hint: when it lies, the
    buffer grows, doubling, up to the cap), so an honest file is decoded with no copy at all. Pages
    of the buffer not yet written cost address space, not memory.
    """

    def __init__(self, rate: int, max_duration: float | None, declared: float | None) -> None:
        self._max_duration = max_duration
        # A little room past the cap: soxr's flushed tail and the frame that crosses it.
        self._limit = None if max_duration is None else int((max_duration + 1.0) * rate)
        hint = min(declared or 30.0, max_duration or 600.0)  # an absurd header costs nothing
        self._buf = np.empty(int((hint + 1.0) * rate), np.float32)
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + chunk.size
        if end > self._buf.size:
            capacity = max(end, 2 * self._buf.size)
            if self._max_duration is not None and self._limit is not None:
                if end > self._limit:
                    raise _too_long(self._max_duration)
                capacity = min(capacity, self._limit)
            grown = np.empty(capacity, np.float32)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        np.clip(chunk, -1.0, 1.0, out=self._buf[self.size : end])
        self.size = end

    def samples(self) -> np.ndarray:
        if self.size < self._buf.size // 2:
            return self._buf[: self.size].copy()  # do not pin a mostly empty buffer
        return self._buf[: self.size]


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).lower()


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """A packed float frame, averaged to mono. (Packed: one plane, interleaved. PyAV reads past the
    end of the frame's plane pointers for planar audio with more than 8 channels: a segfault.)"""
    channels = len(frame.layout.channels)
    samples = frame.to_ndarray().reshape(-1, channels)  # (samples, channels)
    return samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]


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
