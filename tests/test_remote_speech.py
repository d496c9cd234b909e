"""Remote speech engines (a thin front) against a real back: a localrt server over the real engines.

The back is the shared ``server_url`` fixture (Whisper tiny.en and Piper in this process, served by
uvicorn); the front is :class:`RemoteSpeechToText` / :class:`RemoteTextToSpeech` pointed at its ``/v1``,
as ``localrt serve --stt-base-url ... --tts-base-url ...`` builds them. Nothing is faked: the audio
crosses real HTTP (a WAV upload, a streamed pcm answer) both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from localrt.audio.pcm import float32_to_int16, int16_to_float32
from localrt.audio.resample import resample
from localrt.engines import Engines, engine_name
from localrt.engines.remote_common import Upstream
from localrt.engines.remote_stt import RemoteSpeechToText
from localrt.engines.remote_tts import MAX_CHUNK_BYTES, PCM_RATE, RemoteTextToSpeech, list_voices
from localrt.engines.scheduler import Priority, Scheduler, SchedulerStats
from localrt.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from localrt.serving import free_port
from tests.servers import make_settings

QUESTION = "What color is the sky?"


async def idle(scheduler: Scheduler, within: float = 1.0) -> SchedulerStats:
    """The scheduler's stats once no job runs (a released slot's worker ends its job a moment later)."""
    for _ in range(int(within / 0.01)):
        if scheduler.stats().running == 0:
            break
        await asyncio.sleep(0.01)
    return scheduler.stats()


async def _close(engine: RemoteSpeechToText | RemoteTextToSpeech) -> None:
    await engine.upstream.client().close()  # this test's loop's connections, before the loop goes
    engine.scheduler.close()


@pytest.fixture
async def front_stt(server_url: str) -> AsyncIterator[RemoteSpeechToText]:
    engine = RemoteSpeechToText(Upstream(server_url + "/v1"), "whisper-1", slots=2)
    yield engine
    await _close(engine)


@pytest.fixture
async def front_tts(server_url: str) -> AsyncIterator[RemoteTextToSpeech]:
    upstream = Upstream(server_url + "/v1")
    voices = await asyncio.to_thread(list_voices, upstream)
    engine = RemoteTextToSpeech(upstream, "tts-1", upstream_voices=voices, slots=2)
    yield engine
    await _close(engine)


@pytest.fixture(scope="module")
def question_16k(engines: Engines) -> np.ndarray:
    """Piper speech of QUESTION at 16 kHz, float32 holding exact int16 values (what a WAV upload
    carries), so the local and the remote engine decode the very same samples."""
    assert engines.tts is not None

    async def speak() -> np.ndarray:
        assert engines.tts is not None
        chunk = await engines.tts.synthesize(QUESTION)
        audio16k = resample(int16_to_float32(chunk.samples), chunk.sample_rate, 16000)
        return int16_to_float32(float32_to_int16(audio16k))

    return asyncio.run(speak())


def test_a_base_url_selects_the_remote_engines() -> None:
    settings = make_settings(stt_base_url="http://back:8001/v1", tts_base_url="http://back:8001")
    assert engine_name(settings, "stt") == "openai" and engine_name(settings, "tts") == "openai"
    assert engine_name(make_settings(), "stt") == "faster_whisper"
    explicit = make_settings(stt_base_url="http://back:8001/v1", stt_engine="faster_whisper")
    assert engine_name(explicit, "stt") == "faster_whisper"  # only a default engine is replaced
    with pytest.raises(ValueError, match="http"):
        make_settings(tts_base_url="ftp://back")


@pytest.mark.slow
@pytest.mark.anyio
async def test_transcription_matches_the_local_engine(
    engines: Engines, front_stt: RemoteSpeechToText, question_16k: np.ndarray
) -> None:
    assert engines.stt is not None
    local = await engines.stt.transcribe(question_16k)
    remote = await front_stt.transcribe(question_16k, language="en")
    assert local.text and remote.text == local.text
    assert remote.language == "en" and remote.duration == pytest.approx(local.duration, abs=0.05)
    assert [s.text for s in remote.segments] == [s.text for s in local.segments]
    # stream (realtime turns): plain json, the text as one segment
    async with front_stt.stream(question_16k, priority=Priority.REALTIME) as segments:
        texts = [s.text async for s in segments]
    assert "".join(texts).strip() == local.text
    # words
    worded = await front_stt.transcribe(question_16k, word_timestamps=True)
    words = [w for s in worded.segments for w in s.words or []]
    assert words and " ".join(w.word.strip() for w in words) == local.text
    stats = await idle(front_stt.scheduler)
    assert stats.completed == 3 and stats.running == 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_speech_streams_sentence_chunks(front_tts: RemoteTextToSpeech) -> None:
    assert "en_US-joe-medium" in {v.id for v in front_tts.voices()}  # listed by the back
    assert "alloy" in {v.id for v in front_tts.voices()}
    with pytest.raises(InvalidRequest, match="Unknown voice"):
        front_tts.resolve_voice("no-such-voice")
    chunks = []
    async with front_tts.stream("Good morning. It is a fine day.", voice="en_US-joe-medium") as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert list(dict.fromkeys(c.text for c in chunks)) == ["Good morning.", "It is a fine day."]
    assert all(c.sample_rate == PCM_RATE and 0 < c.samples.size <= MAX_CHUNK_BYTES // 2 for c in chunks)
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.dtype == np.int16 and audio.size > PCM_RATE  # over a second of speech
    assert int(np.abs(audio).max()) > 1000  # not silence
    whole = await front_tts.synthesize("Good morning.", voice="alloy")
    assert whole.sample_rate == PCM_RATE and whole.samples.size > PCM_RATE // 4


@pytest.mark.slow
@pytest.mark.anyio
async def test_leaving_the_speech_stream_releases_the_slot_at_once(
    engines: Engines, front_tts: RemoteTextToSpeech
) -> None:
    text = " ".join(f"This is sentence number {n} of a long text." for n in range(20))
    stream = front_tts.stream(text)
    async with stream:
        first = await stream.__anext__()
        assert first.text == "This is sentence number 0 of a long text."
        assert front_tts.scheduler.stats().running == 1
    assert (await idle(front_tts.scheduler, within=0.2)).running == 0  # released as the stream closed
    # The back stops too: its synthesis job ends soon after its client went away.
    assert engines.tts is not None
    for _ in range(200):
        if not engines.tts.stats()[0].running:
            break
        await asyncio.sleep(0.05)
    assert engines.tts.stats()[0].running == 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_upstream_errors_are_mapped(server_url: str, question_16k: np.ndarray) -> None:
    # the back refuses the language: its 400 and message, as localrt's InvalidRequest
    stt = RemoteSpeechToText(Upstream(server_url + "/v1"), "whisper-1", slots=1)
    try:
        with pytest.raises(InvalidRequest, match="Unsupported language"):
            await stt.transcribe(question_16k, language="xx")
    finally:
        await _close(stt)
    # a model the back does not have
    stt = RemoteSpeechToText(Upstream(server_url + "/v1"), "no-such-whisper", slots=1)
    tts = RemoteTextToSpeech(Upstream(server_url + "/v1"), "no-such-tts", slots=1)
    try:
        with pytest.raises(ModelNotFound):
            await stt.transcribe(question_16k)
        with pytest.raises(ModelNotFound):
            await tts.synthesize("Hello.")
    finally:
        await _close(stt)
        await _close(tts)


@pytest.mark.anyio
async def test_a_down_upstream_fails_fast_with_a_clear_error(question_16k_silence: np.ndarray) -> None:
    down = f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"  # nothing listens there
    stt = RemoteSpeechToText(Upstream(down), slots=1)
    tts = RemoteTextToSpeech(Upstream(down), slots=1)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="unreachable") as stt_error:
            await stt.transcribe(question_16k_silence)
        with pytest.raises(ServiceUnavailable, match="unreachable") as tts_error:
            async with tts.stream("Hello there.", priority=Priority.REALTIME) as chunks:
                async for _ in chunks:
                    pass
        assert time.monotonic() - started < 5
        assert stt_error.value.code == tts_error.value.code == "upstream_unavailable"
        assert "127.0.0.1" in stt_error.value.message
        assert (await idle(stt.scheduler)).running == (await idle(tts.scheduler)).running == 0
        probe = await stt.probe()
        assert probe["reachable"] is False
    finally:
        await _close(stt)
        await _close(tts)


@pytest.fixture
def question_16k_silence() -> np.ndarray:
    return np.zeros(16000, np.float32)


class RawSpeechUpstream:
    """A bare HTTP/1.1 server answering every request with chunked pcm ``pieces`` (then the end of the
    body, or a cut connection with ``complete=False``): an upstream that streams in odd sizes, or dies."""

    def __init__(self, pieces: list[bytes], *, complete: bool = True) -> None:
        self.pieces = pieces
        self.complete = complete
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        self.requests.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in self.pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        if self.complete:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.mark.anyio
async def test_pcm_in_odd_pieces_becomes_whole_samples_of_at_most_200_ms() -> None:
    pcm = (np.arange(14_800, dtype=np.int16) % 2000).astype("<i2").tobytes()
    raw = RawSpeechUpstream([pcm[:4801], pcm[4801:9600], pcm[9600:]])
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tts = RemoteTextToSpeech(Upstream(f"http://127.0.0.1:{port}/v1"), "tts-1", slots=1)
    try:
        async with tts.stream("Hello there.", voice="any-voice-it-has") as stream:
            chunks = [c async for c in stream]
        assert all(c.text == "Hello there." and 0 < c.samples.size <= MAX_CHUNK_BYTES // 2 for c in chunks)
        assert np.concatenate([c.samples for c in chunks]).astype("<i2").tobytes() == pcm
        body = raw.requests[0].decode()
        assert '"response_format":"pcm"' in body.replace(" ", "") and "any-voice-it-has" in body
    finally:
        await _close(tts)
        server.close()


@pytest.mark.anyio
async def test_an_upstream_dying_mid_sentence_is_a_clear_error() -> None:
    raw = RawSpeechUpstream([b"\x01\x00" * 4800], complete=False)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tts = RemoteTextToSpeech(Upstream(f"http://127.0.0.1:{port}/v1"), "tts-1", slots=1)
    try:
        received = []
        with pytest.raises(ServiceUnavailable, match="closed the connection") as error:
            async with tts.stream("Hello there.") as stream:
                async for chunk in stream:
                    received.append(chunk)
        assert error.value.code == "upstream_unavailable"
        assert (await idle(tts.scheduler)).running == 0
    finally:
        await _close(tts)
        server.close()


@pytest.mark.anyio
async def test_cancelling_a_transcription_closes_its_request() -> None:
    """An upstream that never answers: cancelling the caller closes the connection and frees the slot."""
    received, closed = asyncio.Event(), asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        while await reader.read(65536):  # the body, then nothing until the client goes
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stt = RemoteSpeechToText(Upstream(f"http://127.0.0.1:{port}/v1"), slots=1)
    try:
        task = asyncio.ensure_future(stt.transcribe(np.zeros(16000, np.float32), priority=Priority.REALTIME))
        await asyncio.wait_for(received.wait(), 5)
        assert stt.scheduler.stats().running == 1
        task.cancel()
        await asyncio.wait_for(closed.wait(), 2)  # the upstream saw the request go away
        assert (await idle(stt.scheduler)).running == 0
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await _close(stt)
        server.close()
