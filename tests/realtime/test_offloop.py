"""Nothing blocking on the event loop in the realtime input path, and the input path's STT jobs.

Every session of a server shares one event loop, so decoding one client's 10 MiB of audio on it would
stall every other session. These tests send the big input on session A and, while it is being worked
on, time session B's events. To make "while" certain on any machine, each big piece of resampling is
slowed down by a sleep (a slower CPU, but releasing the GIL as numpy and soxr do): done on the loop,
B would wait for all of it (about a second); off the loop, B's answers come in milliseconds. The
margins are generous (half a second for an answer that takes milliseconds).

The STT tests run the fake Whisper behind the real scheduler: its jobs carry ``Priority.REALTIME``, and
a full queue or a closed engine fails one transcription (``…input_audio_transcription.failed``), not
the session.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from rt_fakes import Client, FakeEngines, connect, silence, tone

from localrt.audio import g711
from localrt.audio.resample import StreamResampler, resample
from localrt.engines.scheduler import JobControl, Priority, Scheduler
from localrt.realtime.offload import Abandoned, check, run_off_loop

pytestmark = pytest.mark.anyio

MiB = 1 << 20
PIECE_DELAY_S = 0.012  # per resampled piece of ~49 K samples
SLOWED_PIECES = 100  # so 10 MiB of base64 (80-160 pieces) takes over a second
PROMPT_S = 0.5  # what "promptly" means for a session B event (it takes milliseconds)
FAILED = "conversation.item.input_audio_transcription.failed"
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture
def slow_resampling(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The first big pieces of streamed resampling sleep; the event is set when the first one starts."""
    started = threading.Event()
    slowed = iter(range(SLOWED_PIECES))
    real = StreamResampler.process

    def process(self: StreamResampler, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        if np.asarray(chunk).size >= 40000 and next(slowed, None) is not None:
            started.set()
            time.sleep(PIECE_DELAY_S)
        return real(self, chunk, last)

    monkeypatch.setattr(StreamResampler, "process", process)
    return started


async def open_session(url: str, *, fmt: str = "audio/pcm", transcribe: bool = False) -> Client:
    client = await connect(url)
    assert (await client.recv())["type"] == "session.created"
    audio_in: dict[str, Any] = {"format": {"type": fmt}, "turn_detection": None}
    if fmt == "audio/pcm":
        audio_in["format"]["rate"] = 24000
    if transcribe:
        audio_in["transcription"] = {"model": "whisper-1"}
    update = {"type": "realtime", "output_modalities": ["text"], "audio": {"input": audio_in}}
    await client.send({"type": "session.update", "session": update})
    assert (await client.recv())["type"] == "session.updated"
    return client


def audio_item(audio_b64: str) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio_b64}]}
    return {"type": "conversation.item.create", "item": item}


def text_item(text: str) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item}


async def timed(client: Client, kind: str, timeout: float = 60.0) -> tuple[list[dict[str, Any]], float]:
    """Every event up to the first ``kind``, and when that one arrived."""
    events = await client.until(kind, timeout)
    return events, time.monotonic()


async def round_trips(client: Client, n: int = 3) -> tuple[list[float], float]:
    """``n`` text items created one after the other: each one's answer time, and when the last came."""
    times: list[float] = []
    for i in range(n):
        start = time.monotonic()
        await client.send(text_item(f"ping {i}"))
        done = (await client.until("conversation.item.done", timeout=30))[-1]
        assert done["item"]["content"][0]["text"] == f"ping {i}"
        times.append(time.monotonic() - start)
    return times, time.monotonic()


async def eventually(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def big_audio(fmt: str, b64_chars: int) -> tuple[str, np.ndarray, int]:
    """About ``b64_chars`` of base64 audio in ``fmt``: (base64, its int16 samples, their rate)."""
    rng = np.random.default_rng(7)
    if fmt == "audio/pcm":
        n = b64_chars // 4 * 3 // 2
        samples = (rng.standard_normal(n) * 3000).astype(np.int16)
        return base64.b64encode(samples.astype("<i2").tobytes()).decode(), samples, 24000
    n = b64_chars // 4 * 3
    codes = g711.ulaw_encode((rng.standard_normal(n) * 3000).astype(np.int16))
    return base64.b64encode(codes.tobytes()).decode(), g711.ulaw_decode(codes), 8000


def assert_stt_got(fake_engines: FakeEngines, samples: np.ndarray, rate: int) -> None:
    """Whisper got ``samples`` at 16 kHz (float32), as a one-shot resampling would make them."""
    assert fake_engines.stt is not None
    got = max(fake_engines.stt.calls, key=lambda a: a.size)
    expected = resample(samples, rate, 16000).astype(np.float32) / 32768
    assert abs(got.size - expected.size) <= 2
    n = min(got.size, expected.size)
    assert float(np.max(np.abs(got[:n] - expected[:n]))) < 2e-3


# --- conversation.item.create / input_audio_buffer.append of 10 MiB -------------------------------------
@pytest.mark.parametrize("fmt", ["audio/pcm", "audio/pcmu"])
async def test_a_10_mib_item_create_does_not_stall_another_session(
    fake_ws_url: str, fake_engines: FakeEngines, slow_resampling: threading.Event, fmt: str
) -> None:
    audio_b64, samples, rate = big_audio(fmt, 10 * MiB)
    async with await open_session(fake_ws_url, fmt=fmt) as a, await open_session(fake_ws_url) as b:
        await a.send(audio_item(audio_b64))
        answer = asyncio.create_task(timed(a, "conversation.item.done"))
        assert await asyncio.to_thread(slow_resampling.wait, 30)  # A's audio is being decoded now
        times, b_done = await round_trips(b)
        events, a_done = await answer
        assert max(times) < PROMPT_S, times
        assert b_done < a_done  # B was answered while A's item was still being decoded
        added = next(e for e in events if e["type"] == "conversation.item.added")
        assert added["item"]["content"][0]["type"] == "input_audio"
        await eventually(lambda: fake_engines.stt is not None and fake_engines.stt.calls)
        assert_stt_got(fake_engines, samples, rate)


async def test_a_10_mib_append_does_not_stall_another_session(
    fake_ws_url: str, fake_engines: FakeEngines, slow_resampling: threading.Event
) -> None:
    audio_b64, samples, rate = big_audio("audio/pcm", 10 * MiB)
    async with await open_session(fake_ws_url) as a, await open_session(fake_ws_url) as b:
        await a.send({"type": "input_audio_buffer.append", "audio": audio_b64})
        await a.send({"type": "input_audio_buffer.commit"})  # handled after the append, in order
        answer = asyncio.create_task(timed(a, "conversation.item.done"))
        assert await asyncio.to_thread(slow_resampling.wait, 30)
        times, b_done = await round_trips(b)
        events, a_done = await answer
        assert max(times) < PROMPT_S, times
        assert b_done < a_done
        assert [e["type"] for e in events][:1] == ["input_audio_buffer.committed"]
        await eventually(lambda: fake_engines.stt is not None and fake_engines.stt.calls)
        assert_stt_got(fake_engines, samples, rate)


async def test_an_item_created_then_retrieved_is_there(fake_ws_url: str) -> None:
    """The reader awaits the off-loop decode: the retrieve sent right after the create sees the item."""
    audio_b64, _, _ = big_audio("audio/pcm", 2 * MiB)
    async with await open_session(fake_ws_url) as a:
        create = audio_item(audio_b64)
        create["item"]["id"] = "item_big"
        await a.send(create)
        await a.send({"type": "conversation.item.retrieve", "item_id": "item_big"})
        events = await a.until("conversation.item.retrieved", timeout=30)
        assert "error" not in [e["type"] for e in events]
        assert events[-1]["item"]["id"] == "item_big"


# --- conversation.item.retrieve -------------------------------------------------------------------------
async def test_retrieving_a_large_audio_item_does_not_stall_another_session(
    fake_ws_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    real = resample

    def slow_resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
        started.set()
        time.sleep(1.5)  # a slow machine: on the loop, every session would wait this long
        return real(samples, in_rate, out_rate)

    monkeypatch.setattr("localrt.realtime.budget.resample", slow_resample)
    original = tone(15.0)  # 15 s of pcm16 at 24 kHz: close to what one 1 MiB event can carry
    async with await open_session(fake_ws_url) as a, await open_session(fake_ws_url) as b:
        create = audio_item(base64.b64encode(original.astype("<i2").tobytes()).decode())
        create["item"]["id"] = "item_long"
        await a.send(create)
        await a.until("conversation.item.done", timeout=30)
        await a.send({"type": "conversation.item.retrieve", "item_id": "item_long"})
        answer = asyncio.create_task(timed(a, "conversation.item.retrieved"))
        assert await asyncio.to_thread(started.wait, 30)
        times, b_done = await round_trips(b)
        events, a_done = await answer
        assert max(times) < PROMPT_S, times
        assert b_done < a_done
        part = events[-1]["item"]["content"][0]
        back = np.frombuffer(base64.b64decode(part["audio"]), "<i2").astype(np.float64)
        assert abs(back.size - original.size) <= 3  # 24 kHz -> 16 kHz (kept) -> 24 kHz
        n = min(back.size, original.size)
        error = np.sqrt(np.mean((back[:n] - original[:n]) ** 2)) / np.sqrt(np.mean(original[:n] ** 2.0))
        assert error < 0.01


# --- the off-loop helper --------------------------------------------------------------------------------
async def test_cancelling_off_loop_work_returns_at_once_and_stops_it() -> None:
    pieces: list[int] = []
    stopped = threading.Event()

    def work(stop: threading.Event) -> None:
        try:
            for i in range(500):
                check(stop)
                time.sleep(0.01)
                pieces.append(i)
        except Abandoned:
            stopped.set()
            raise

    task = asyncio.create_task(run_off_loop(work))
    await eventually(lambda: pieces)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 0.1  # never waits for the thread
    assert await asyncio.to_thread(stopped.wait, 5)  # which stops at its next piece
    assert len(pieces) < 500


# --- speech to text -------------------------------------------------------------------------------------
async def test_realtime_stt_jobs_carry_priority_realtime(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    stt = fake_engines.stt
    assert stt is not None
    async with await connect(fake_ws_url) as client:
        assert (await client.recv())["type"] == "session.created"
        update = {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"transcription": {"model": "whisper-1"}}},  # server VAD stays on
        }
        await client.send({"type": "session.update", "session": update})
        await client.until("session.updated")
        speech = np.concatenate([silence(0.3), tone(1.0), silence(1.0)])
        for start in range(0, speech.size, 2400):  # 100 ms appends: a voice turn
            chunk = speech[start : start + 2400].astype("<i2").tobytes()
            await client.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            )
        await client.until(COMPLETED, timeout=10)
        await client.send(audio_item(base64.b64encode(tone(0.5).astype("<i2").tobytes()).decode()))
        await client.until(COMPLETED, timeout=10)
    assert len(stt.priorities) >= 2  # the turn (or its speculation) and the created item
    # Whisper started in the pause runs at SPECULATIVE (promoted once the turn ends); the rest at REALTIME.
    assert set(stt.priorities) <= {Priority.REALTIME, Priority.SPECULATIVE}
    assert stt.priorities[-1] == Priority.REALTIME


@pytest.fixture
def blocked_stt(fake_engines: FakeEngines) -> Iterator[tuple[Scheduler, threading.Event]]:
    """The fake Whisper with a queue of one, for the test to fill (released on exit)."""
    stt = fake_engines.stt
    assert stt is not None
    stt.scheduler.close(wait=1.0)
    stt.scheduler = Scheduler("stt", slots=1, max_queue=1)
    release = threading.Event()
    yield stt.scheduler, release
    release.set()


async def _fill(scheduler: Scheduler, release: threading.Event) -> list[Any]:
    """One job running and one queued: the next submit is refused (QueueFull)."""

    def produce(control: JobControl) -> Iterator[int]:
        while not release.wait(0.01) and not control.is_set():
            pass
        yield 0

    jobs = [scheduler.submit(produce, priority=Priority.HTTP)]
    await eventually(lambda: scheduler.stats().running == 1)
    jobs.append(scheduler.submit(produce, priority=Priority.HTTP))
    assert scheduler.stats().queued == 1
    return jobs


@pytest.mark.parametrize("failure", ["queue_full", "closed"])
async def test_stt_queue_full_or_closed_fails_the_transcription_not_the_session(
    fake_ws_url: str,
    fake_engines: FakeEngines,
    blocked_stt: tuple[Scheduler, threading.Event],
    failure: str,
) -> None:
    scheduler, release = blocked_stt
    jobs = await _fill(scheduler, release) if failure == "queue_full" else []
    if failure == "closed":
        scheduler.close(wait=1.0)
    speech = base64.b64encode(tone(0.5).astype("<i2").tobytes()).decode()
    async with await open_session(fake_ws_url, transcribe=True) as client:
        await client.send(audio_item(speech))
        failed = (await client.until(FAILED, timeout=10))[-1]
        expected = ("rate_limit_error", "rate_limit_exceeded")
        if failure == "closed":
            expected = ("server_error", "service_unavailable")
        assert (failed["error"]["type"], failed["error"]["code"]) == expected
        assert failed["content_index"] == 0
        # The session goes on: a response runs (without the lost transcript), and once the engine has
        # room again, a new item is transcribed.
        await client.send(text_item("Hello?"))
        await client.send({"type": "response.create"})
        done = (await client.until("response.done", timeout=10))[-1]
        assert done["response"]["status"] == "completed"
        if failure == "queue_full":
            release.set()
            for job in jobs:
                async with job:
                    assert [x async for x in job] == [0]
            await client.send(audio_item(speech))
            completed = (await client.until(COMPLETED, timeout=10))[-1]
            assert completed["transcript"] == "What is the capital of France?"
