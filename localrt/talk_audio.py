"""Audio in and out for ``localrt talk``: files standing in for devices, and the devices themselves.

Everything leaves and arrives as the Realtime wire format: 24 kHz mono little-endian pcm16. Devices run at
their own default rate (whatever the sound server or ALSA ``default`` prefers) and are resampled with
soxr both ways. ``sounddevice`` is imported only by :func:`load_sounddevice`, so the file-only mode never
needs PortAudio; its failures become :class:`AudioUnavailable` with a one-line message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from localrt.audio.codecs import decode
from localrt.audio.pcm import float32_to_int16, int16_to_bytes
from localrt.audio.resample import StreamResampler
from localrt.errors import APIError

RATE = 24_000  # the Realtime API's pcm16 rate
CHUNK_MS = 100  # what a microphone (or a file standing in for one) sends at a time
MAX_INPUT_SECONDS = 600.0


class AudioUnavailable(Exception):
    """No audio I/O here (PortAudio missing, no device, a file unreadable); the message is one line."""


# -- files ------------------------------------------------------------------------------------------------
def load_input(path: str) -> np.ndarray:
    """Any audio file FFmpeg reads -> int16 mono at 24 kHz."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AudioUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        samples = decode(data, RATE, max_duration=MAX_INPUT_SECONDS)
    except APIError as exc:
        raise AudioUnavailable(f"{path}: {exc.message}") from exc
    return float32_to_int16(samples)


def write_wav(path: str, pcm: bytes, rate: int = RATE) -> None:
    """Little-endian pcm16 mono -> a WAV file."""
    try:
        with wave.open(path, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm)
    except OSError as exc:
        raise AudioUnavailable(f"cannot write {path}: {exc.strerror or exc}") from exc


async def file_as_microphone(
    samples: np.ndarray,
    stop: asyncio.Event,
    *,
    lead_s: float = 0.3,
    tail_s: float | None = None,
    chunk_ms: int = CHUNK_MS,
) -> AsyncIterator[bytes]:
    """A file played into the session like a microphone: ``chunk_ms`` chunks at real-time pace, after
    ``lead_s`` of silence, then silence (so the server's VAD hears the end of speech) for ``tail_s``
    (None: for ever) or until ``stop`` is set."""
    step = RATE * chunk_ms // 1000
    audio = np.concatenate([np.zeros(int(lead_s * RATE), np.int16), samples.astype(np.int16)])
    total = audio.size + (int(tail_s * RATE) if tail_s is not None else 0)
    silence = bytes(2 * step)
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while not stop.is_set() and (tail_s is None or n * step < total):
        i = n * step
        yield int16_to_bytes(audio[i : i + step]) if i < audio.size else silence
        n += 1
        delay = start + n * chunk_ms / 1000 - loop.time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


# -- devices ----------------------------------------------------------------------------------------------
def load_sounddevice() -> ModuleType:
    """``import sounddevice``, with PortAudio's absence as :class:`AudioUnavailable`."""
    try:
        import sounddevice
    except OSError as exc:  # the module loads libportaudio at import
        raise AudioUnavailable(
            f"no audio: {exc}; install PortAudio (Debian/Ubuntu: apt-get install libportaudio2, macOS: "
            "brew install portaudio) or use --input and --output files"
        ) from exc
    except ImportError as exc:
        raise AudioUnavailable(f"no audio: sounddevice is not installed ({exc})") from exc
    return cast(ModuleType, sounddevice)


def device_error(exc: BaseException) -> AudioUnavailable:
    return AudioUnavailable(
        f"no audio device: {exc} (check `python -m sounddevice`; or use --input and --output files)"
    )


def _default_rate(sd: ModuleType, kind: str) -> int:
    info: Any = sd.query_devices(kind=kind)
    return int(info["default_samplerate"])


class Microphone:
    """The default input device as 24 kHz pcm16 chunks of about ``CHUNK_MS`` (newest kept if we lag)."""

    def __init__(self, sd: ModuleType, max_queued: int = 50) -> None:
        self.rate = _default_rate(sd, "input")
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(max_queued)
        self._resampler = StreamResampler(self.rate, RATE, dtype=np.int16)
        self._stream = sd.RawInputStream(
            samplerate=self.rate,
            channels=1,
            dtype="int16",
            blocksize=self.rate * CHUNK_MS // 1000,
            callback=self._captured,
        )
        self._closed = False

    def _captured(self, indata: Any, frames: int, time: Any, status: Any) -> None:  # PortAudio's thread
        self._loop.call_soon_threadsafe(self._put, bytes(indata))

    def _put(self, data: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        self._stream.start()
        try:
            while True:
                data = await self._queue.get()
                out = self._resampler.process(np.frombuffer(data, "<i2").astype(np.int16))
                if out.size:
                    yield int16_to_bytes(out)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.stop()
            self._stream.close()


class Speaker:
    """The default output device playing 24 kHz pcm16 as it arrives; counts what was really played.

    :meth:`take_played` gives the samples (at 24 kHz) the device callback consumed since the last call,
    which is what was heard: the SDK cuts an interrupted reply there.
    """

    def __init__(self, sd: ModuleType) -> None:
        self.rate = _default_rate(sd, "output")
        self._lock = threading.Lock()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._resampler = StreamResampler(RATE, self.rate, dtype=np.int16)
        self._consumed = 0  # device-rate samples the callback took from the queue, ever
        self._reported = 0  # of those, at 24 kHz, handed out by take_played() (or dropped by clear())
        self._stream = sd.OutputStream(samplerate=self.rate, channels=1, dtype="int16", callback=self._fill)
        self._stream.start()

    def play(self, pcm: bytes) -> None:
        out = self._resampler.process(np.frombuffer(pcm, "<i2").astype(np.int16))
        if out.size:
            with self._lock:
                self._queue.append(out)

    def clear(self) -> None:
        """Stops playback at once (barge-in) and forgets what was queued and not yet reported."""
        with self._lock:
            self._queue.clear()
            self._reported = self._consumed * RATE // self.rate
        self._resampler.reset()

    def take_played(self) -> int:
        with self._lock:
            played = self._consumed * RATE // self.rate - self._reported
            self._reported += played
        return played

    def queued_seconds(self) -> float:
        """How long what is queued will play."""
        with self._lock:
            return sum(a.size for a in self._queue) / self.rate

    @property
    def latency_s(self) -> float:
        return float(self._stream.latency)

    def _fill(self, outdata: Any, frames: int, time: Any, status: Any) -> None:  # PortAudio's thread
        filled = 0
        with self._lock:
            while filled < frames and self._queue:
                head = self._queue[0]
                take = min(frames - filled, head.size)
                outdata[filled : filled + take, 0] = head[:take]
                filled += take
                if take == head.size:
                    self._queue.popleft()
                else:
                    self._queue[0] = head[take:]
            self._consumed += filled
        outdata[filled:, 0] = 0

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()
