"""Speech engines behind their schedulers: priorities, preemption between pieces, a bounded queue
(429 over HTTP) and closing.

Fast tests drive the real WhisperEngine / PiperEngine / SileroVAD (and their real schedulers) with
stand-ins for the models, whose calls are logged in order: "the voice turn waited at most one piece"
becomes an order of events, not a timing. The slow tests repeat the priority checks with the real
embedded models.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from audio_helpers import encode_file, wer

from localrt.app import create_app
from localrt.audio.pcm import int16_to_float32
from localrt.audio.resample import resample
from localrt.engines import Engines
from localrt.engines.interfaces import SpeechToText, TextToSpeech, VoiceActivity
from localrt.engines.scheduler import EngineClosed, Priority, QueueFull
from localrt.engines.stt import WhisperEngine
from localrt.engines.tts import PiperEngine
from localrt.engines.types import AudioChunk, Voice
from localrt.engines.vad import WINDOW, SileroVAD
from localrt.serving import serve_in_thread
from tests.servers import error_of, make_settings

JOE = Voice("en_US-joe-medium", Path("joe.onnx"), 22050, "en_US")
RATE = 16000
LONG_S = 30 * 8  # eight 30 s windows
SHORT_S = 2


# --- stand-ins ----------------------------------------------------------------------------------------


class WindowedWhisper:
    """faster-whisper's shape: per 30 s window one encoder pass and five ``generate`` calls (the
    temperature fallback), then the window's segment. Audio longer than a window is "long"."""

    supported_languages = ("en",)
    max_length = 448

    def __init__(self, call_s: float = 0.02) -> None:
        call = lambda *args, **kwargs: time.sleep(call_s)  # noqa: E731 (CTranslate2's native calls)
        self.model = SimpleNamespace(encode=call, generate=call)
        self.feature_extractor = SimpleNamespace()  # not called
        self.log: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.gated = threading.Event()

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[Any], Any]:
        tag = "long" if len(audio) > 30 * RATE else "short"
        windows = -(-len(audio) // (30 * RATE))

        def segments() -> Iterator[Any]:
            if not self.gate.is_set():
                self.gated.set()
                assert self.gate.wait(20), "test did not open the gate"
            for i in range(windows):
                for call in ("encode", *["generate"] * 5):
                    getattr(self.model, call)()  # checked (and preempted) before each call
                    self.log.append((tag, call))
                yield SimpleNamespace(
                    id=i + 1, seek=0, start=30.0 * i, end=30.0 * i + 1, text=f" {tag} {i}.", tokens=[i],
                    temperature=0.0, avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0, words=None,
                )  # fmt: skip

        return segments(), SimpleNamespace(language="en", duration=len(audio) / RATE)


class SlowVoice:
    """piper.PiperVoice: ``sentence_s`` per sentence, logged; optionally held before the first one."""

    def __init__(self, sentence_s: float = 0.02) -> None:
        self.config = SimpleNamespace(sample_rate=JOE.sample_rate, length_scale=1.0)
        self.sentence_s = sentence_s
        self.log: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.gated = threading.Event()

    def synthesize(self, text: str, syn_config: Any = None) -> Iterator[Any]:
        if not self.gate.is_set():
            self.gated.set()
            assert self.gate.wait(20), "test did not open the gate"
        time.sleep(self.sentence_s)
        self.log.append(text)
        yield SimpleNamespace(audio_int16_array=np.full(100, 7, np.int16))


def whisper(model: WindowedWhisper, **kwargs: Any) -> WhisperEngine:
    return WhisperEngine("whisper-fake", model, device="cpu", compute_type="int8", **kwargs)


def piper(voice: SlowVoice, **kwargs: Any) -> PiperEngine:
    return PiperEngine([JOE], JOE.id, load_voice=lambda _: voice, **kwargs)


def test_engines_satisfy_the_interfaces() -> None:
    stt, tts = whisper(WindowedWhisper()), piper(SlowVoice())
    vad = SileroVAD(Path("vad.onnx"), SimpleNamespace())
    assert isinstance(stt, SpeechToText) and isinstance(tts, TextToSpeech)
    assert isinstance(vad, VoiceActivity)
    assert [s.engine for s in (*stt.stats(), *tts.stats(), *vad.stats())] == ["stt", "tts", "vad"]
    for engine in (stt, tts, vad):
        engine.close()


# --- priority and preemption ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("low", "high"),
    [(Priority.BULK, Priority.REALTIME), (Priority.BULK, Priority.HTTP), (Priority.HTTP, Priority.REALTIME)],
)
async def test_a_waiting_transcription_runs_within_one_native_call(low: Priority, high: Priority) -> None:
    model = WindowedWhisper()
    engine = whisper(model)
    long_audio, short_audio = np.zeros(LONG_S * RATE, np.float32), np.zeros(SHORT_S * RATE, np.float32)
    async with engine.stream(long_audio, priority=low) as long:
        first = await long.__anext__()  # the long job is running, one window done
        model.log.append(("test", "submit"))
        short = await engine.transcribe(short_audio, priority=high)
        assert short.text == "short 0."
        rest = [s.text async for s in long]
    assert first.text == " long 0." and rest == [f" long {i}." for i in range(1, LONG_S // 30)]
    after = model.log[model.log.index(("test", "submit")) :]
    first_short = next(i for i, (tag, _) in enumerate(after) if tag == "short")
    # At most the long job's call in flight finished before the short job's first call.
    assert sum(tag == "long" for tag, _ in after[:first_short]) <= 1, after[:first_short]
    assert [tag for tag, _ in after[first_short : first_short + 6]] == ["short"] * 6
    engine.close()


@pytest.mark.anyio
async def test_the_preempted_transcription_can_still_be_stopped_within_one_call() -> None:
    # The nested job's stop signal must not replace the long job's once the nested job is done.
    model = WindowedWhisper(call_s=0.05)
    engine = whisper(model)
    long = engine.stream(np.zeros(LONG_S * RATE, np.float32), priority=Priority.BULK)
    await long.__anext__()
    await engine.transcribe(np.zeros(SHORT_S * RATE, np.float32), priority=Priority.REALTIME)
    await asyncio.sleep(0.08)  # the long job is back in its window
    before = sum(tag == "long" for tag, _ in model.log)
    await long.aclose()
    assert await long.wait_done(10)
    assert sum(tag == "long" for tag, _ in model.log) <= before + 1
    engine.close()


@pytest.mark.anyio
async def test_a_waiting_synthesis_runs_after_the_current_sentence() -> None:
    voice = SlowVoice()
    engine = piper(voice, slots=1)
    text = " ".join(f"Long sentence {i}." for i in range(40))
    async with engine.stream(text, priority=Priority.HTTP) as long:
        assert (await long.__anext__()).text == "Long sentence 0."
        voice.log.append("submit")
        async with engine.stream("Quick reply.", priority=Priority.REALTIME) as quick:
            assert [c.text async for c in quick] == ["Quick reply."]
        chunks = [c async for c in long]
    assert len(chunks) == 39
    after = voice.log[voice.log.index("submit") :]
    assert after.index("Quick reply.") <= 2, after[:5]  # at most the sentence in hand before it
    engine.close()


# --- bounded queue and closing ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_queue_refuses_at_once() -> None:
    voice, model = SlowVoice(), WindowedWhisper()
    voice.gate.clear()
    model.gate.clear()
    tts, stt = piper(voice, slots=1, max_queue=1), whisper(model, max_queue=1)
    audio = np.zeros(RATE, np.float32)
    running: list[Any] = [tts.stream("Held."), stt.stream(audio)]
    assert await asyncio.to_thread(voice.gated.wait, 10) and await asyncio.to_thread(model.gated.wait, 10)
    queued: list[Any] = [tts.stream("Queued."), stt.stream(audio)]
    with pytest.raises(QueueFull) as full:
        tts.stream("One too many.")
    assert full.value.status == 429 and full.value.retry_after > 0
    with pytest.raises(QueueFull):
        await stt.transcribe(audio)
    assert tts.stats()[0].rejected == 1 and stt.stats()[0].queued == 1
    await queued[0].aclose()  # leaving a queued job frees its place at once
    tts.stream("Now it fits.")
    voice.gate.set()
    model.gate.set()
    for job in running + queued:
        await job.aclose()
    tts.close()
    stt.close()


@pytest.mark.anyio
async def test_closing_ends_running_and_queued_jobs() -> None:
    voice, model = SlowVoice(), WindowedWhisper()
    voice.gate.clear()
    model.gate.clear()
    tts, stt = piper(voice, slots=1), whisper(model)
    audio = np.zeros(RATE, np.float32)
    jobs: list[Any] = [tts.stream("Held."), stt.stream(audio)]
    assert await asyncio.to_thread(voice.gated.wait, 10) and await asyncio.to_thread(model.gated.wait, 10)
    jobs += [tts.stream("Queued."), stt.stream(audio)]
    closing = asyncio.gather(asyncio.to_thread(tts.close), asyncio.to_thread(stt.close))
    for job in jobs:  # every caller hears of it while the workers are still held
        with pytest.raises(EngineClosed):
            await asyncio.wait_for(job.__anext__(), 5)
    voice.gate.set()
    model.gate.set()
    await closing
    with pytest.raises(EngineClosed):
        tts.stream("After.")
    with pytest.raises(EngineClosed):
        stt.stream(audio)


class HeldSession:
    """onnxruntime's session for silero: held on a gate, then 0.0 per window."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, _: Any, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(20)
        return np.zeros((1, 1), np.float32), inputs["state"]


@pytest.mark.anyio
async def test_vad_runs_through_its_scheduler_and_closes() -> None:
    session = HeldSession()
    vad = SileroVAD(Path("vad.onnx"), session)
    session.gate.set()
    stream = vad.stream()
    assert await stream.process(np.zeros(WINDOW + 100, np.float32)) == [0.0]
    assert await stream.process(np.zeros(WINDOW, np.float32)) == [0.0] and stream.windows == 2
    session.gate.clear()
    session.entered.clear()
    first = asyncio.create_task(vad.stream().process(np.zeros(WINDOW * 2, np.float32)))
    assert await asyncio.to_thread(session.entered.wait, 10)
    second = asyncio.create_task(vad.stream().process(np.zeros(WINDOW, np.float32)))
    await asyncio.sleep(0.05)
    assert vad.stats()[0].queued == 1 and vad.stats()[0].running == 1
    closing = asyncio.create_task(asyncio.to_thread(vad.close))
    for task in (first, second):
        with pytest.raises(EngineClosed):
            await asyncio.wait_for(task, 5)
    session.gate.set()
    await closing


# --- HTTP: 429 before any byte of a response, priorities of uploads ----------------------------------


class RecordingWhisper(WhisperEngine):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.priorities: list[Priority] = []

    def stream(self, audio: np.ndarray, **kwargs: Any) -> Any:
        self.priorities.append(kwargs["priority"])
        return super().stream(audio, **kwargs)

    async def transcribe(self, audio: np.ndarray, **kwargs: Any) -> Any:
        self.priorities.append(kwargs["priority"])
        return await super().transcribe(audio, **kwargs)


@pytest.fixture
def small_queues() -> Iterator[tuple[str, SlowVoice, WindowedWhisper, RecordingWhisper]]:
    voice, model = SlowVoice(), WindowedWhisper()
    tts = piper(voice, slots=1, max_queue=1)
    stt = RecordingWhisper("whisper-fake", model, device="cpu", compute_type="int8", max_queue=1)
    app = create_app(make_settings(bulk_audio_seconds=5.0), Engines(llm=None, stt=stt, tts=tts))  # type: ignore[arg-type]
    with serve_in_thread(app) as url:
        yield url, voice, model, stt
    voice.gate.set()
    model.gate.set()
    tts.close()
    stt.close()


def _retry_later(response: httpx.Response) -> None:
    error = error_of(response, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) >= 1


def test_speech_over_a_full_queue_is_a_429(
    small_queues: tuple[str, SlowVoice, WindowedWhisper, RecordingWhisper],
) -> None:
    url, voice, _, _ = small_queues
    voice.gate.clear()
    body = {"model": "tts-1", "input": "Hello there. And more.", "response_format": "pcm"}
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/audio/speech", json=body) as running:
            assert running.status_code == 200 and voice.gated.wait(10)
            with client.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as queued:
                assert queued.status_code == 200
                for extra in ({}, {"stream_format": "sse"}):
                    _retry_later(client.post("/v1/audio/speech", json={**body, **extra}))
                voice.gate.set()
                assert b"speech.audio.done" in queued.read()
            assert len(running.read()) > 0
        assert client.post("/v1/audio/speech", json=body).status_code == 200  # room again


def test_transcription_over_a_full_queue_is_a_429_and_long_audio_is_bulk(
    small_queues: tuple[str, SlowVoice, WindowedWhisper, RecordingWhisper],
) -> None:
    url, _, model, stt = small_queues
    short = {"file": ("a.wav", encode_file(np.zeros(RATE, np.float32), RATE, "wav"))}
    long = {"file": ("b.wav", encode_file(np.zeros(6 * RATE, np.float32), RATE, "wav"))}
    fields = {"model": "whisper-1"}
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/audio/transcriptions", files=short, data=fields).json()["text"] == "short 0."
        model.gate.clear()
        streamed = {**fields, "stream": "true"}
        with client.stream("POST", "/v1/audio/transcriptions", files=long, data=streamed) as running:
            assert running.status_code == 200 and model.gated.wait(10)
            with client.stream("POST", "/v1/audio/transcriptions", files=short, data=streamed) as queued:
                assert queued.status_code == 200
                for extra in ({}, {"stream": "true"}):
                    _retry_later(
                        client.post("/v1/audio/transcriptions", files=short, data={**fields, **extra})
                    )
                model.gate.set()
                assert b"transcript.text.done" in queued.read()
            assert b"transcript.text.done" in running.read()
    # The first request, the long one (bulk), the queued one, and the two refused.
    assert stt.priorities == [Priority.HTTP, Priority.BULK, Priority.HTTP, Priority.HTTP, Priority.HTTP]


# --- the real models ----------------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back after lunch tomorrow.",
    "A long transcription should never hold up a voice turn.",
]


async def _consume(stream: Any, log: list[str], tag: str, started: asyncio.Event) -> None:
    async with stream:
        async for _ in stream:
            log.append(tag)
            started.set()


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_voice_turn_synthesis_waits_at_most_a_sentence(engines: Engines) -> None:
    assert engines.tts is not None
    tts = engines.tts
    slots = tts.stats()[0].slots
    text = " ".join(f"This is sentence number {i} of a long answer." for i in range(20))
    log: list[str] = []
    longs = [tts.stream(text, priority=Priority.HTTP) for _ in range(slots)]  # every worker busy
    started = [asyncio.Event() for _ in longs]
    tasks = [asyncio.create_task(_consume(s, log, f"long{i}", started[i])) for i, s in enumerate(longs)]
    for event in started:
        await event.wait()
    log.append("submit")
    async with tts.stream("Sure, here you go.", priority=Priority.REALTIME) as quick:
        first: AudioChunk = await quick.__anext__()
    log.append("quick")
    after = log[log.index("submit") : log.index("quick")]
    assert first.text == "Sure, here you go." and len(first.samples) > 0.3 * first.sample_rate
    # The worker that took the turn finished one sentence in hand; the others kept going meanwhile.
    assert min(after.count(f"long{i}") for i in range(slots)) <= 2, after
    assert all(after.count(f"long{i}") <= 4 for i in range(slots)), after
    await asyncio.gather(*tasks)
    assert log.count("long0") == 20


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_voice_turn_transcription_waits_at_most_a_segment(engines: Engines) -> None:
    assert engines.stt is not None and engines.tts is not None
    speech = []
    for text in SENTENCES:
        chunk = await engines.tts.synthesize(text)
        speech.append(resample(int16_to_float32(chunk.samples), chunk.sample_rate, RATE))
    gap = np.zeros(RATE // 2, np.float32)
    # Long enough that its job is still running when the turn comes (the priority is given here, so
    # its length need not pass --bulk-audio-seconds).
    long_audio = np.concatenate([part for _ in range(4) for s in speech for part in (s, gap)])
    assert len(long_audio) > 30 * RATE
    log: list[str] = []
    long: Any = engines.stt.stream(long_audio, priority=Priority.BULK)
    started = asyncio.Event()
    task = asyncio.create_task(_consume(long, log, "long", started))
    await started.wait()
    # The rest of the first window's segments were emitted with the first (a window's segments come
    # at once); let them arrive, so what follows "submit" was decoded after it.
    await asyncio.sleep(0.05)
    log.append("submit")
    turn = await engines.stt.transcribe(speech[1], priority=Priority.REALTIME)
    log.append("turn")
    assert wer(SENTENCES[1], turn.text) < 0.2, turn.text
    assert log[log.index("submit") :].index("turn") <= 3, log  # at most 2 further segments
    await long.aclose()  # the rest of the long job is not this test's business
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert log.count("long") >= 1
