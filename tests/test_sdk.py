"""The Python voice SDK (``localrt.sdk``) against the real server with the real models.

Piper speech streamed at real-time pace into ``RealtimeVoice.run()``, the same speech sent at once, a
Python tool the SDK runs, a barge-in on a long story checked with ``conversation.item.retrieve`` (the reply
cut where playback was), connection and settings errors, and the README's examples run as written. The
unit checks (no model) are in ``test_sdk_unit.py``.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localrt.sdk import (
    AudioChunk,
    Interrupted,
    PlaybackMode,
    RealtimeConfig,
    RealtimeConnectionError,
    RealtimeError,
    RealtimeVoice,
    ResponseDone,
    ToolCallRequest,
    ToolCallResult,
    TranscriptDelta,
)
from tests.servers import API_KEY

README = Path(__file__).resolve().parent.parent / "README.md"
QUESTION = "What color is the sky?"
INSTRUCTIONS = "You are a helpful assistant. Answer in English, in one short sentence."


# --- the real server -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def question_speech() -> Iterator[np.ndarray]:
    """Piper speech of QUESTION at 24 kHz (noise off, so every run hears the same input)."""
    from localrt.catalog import EMBEDDED_VOICE_ID, embedded_voice
    from localrt.engines.tts import PiperEngine, read_voice
    from tests.realtime.rt_speech import synthesize

    path = embedded_voice()
    assert path is not None
    tts = PiperEngine(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_scale=0.0, noise_w_scale=0.0
    )
    try:
        yield asyncio.run(synthesize(tts, (QUESTION,)))[QUESTION]
    finally:
        tts.close()


async def microphone(audio: np.ndarray, chunk_ms: int = 100, tail_ms: int = 1000) -> AsyncIterator[bytes]:
    """``audio`` as a microphone gives it: ``chunk_ms`` pieces at real-time pace, then silence."""
    audio = np.concatenate([np.zeros(4800, np.int16), audio, np.zeros(24 * tail_ms, np.int16)])
    pcm = audio.astype("<i2").tobytes()
    step = 48 * chunk_ms
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(pcm), step)):
        yield pcm[i : i + step]
        await asyncio.sleep(max(0.0, start + (n + 1) * chunk_ms / 1000 - loop.time()))


slow = pytest.mark.slow


@slow
@pytest.mark.anyio
async def test_voice_turn_through_run(server_url: str, question_speech: np.ndarray) -> None:
    voice = RealtimeVoice(RealtimeConfig(instructions=INSTRUCTIONS, max_tokens=30), url=server_url)
    calls: list[tuple[str, Any]] = []

    @voice.on_transcript
    async def both_sides(text: str, is_final: bool, speaker: str) -> None:
        calls.append((f"{speaker}-{'final' if is_final else 'delta'}", text))

    @voice.on_transcript
    def assistant_only(text: str, is_final: bool) -> None:  # sync callbacks work too
        calls.append(("assistant-only", is_final))

    @voice.on_audio
    async def play(audio: bytes) -> None:
        calls.append(("audio", len(audio)))

    events = [e async for e in voice.run(microphone(question_speech))]
    kinds = [k for k, _ in calls]
    assert kinds.count("user-final") == 1 and "assistant-final" in kinds, kinds
    user = next(text for kind, text in calls if kind == "user-final")
    assert "sky" in user.lower(), user
    first = {k: kinds.index(k) for k in ("user-final", "assistant-delta", "audio", "assistant-final")}
    assert first["user-final"] < first["assistant-delta"] < first["assistant-final"], kinds
    assert first["user-final"] < first["audio"] < first["assistant-final"], kinds
    # The two-parameter callback saw only the assistant: as many calls as assistant transcript events.
    assert kinds.count("assistant-only") == kinds.count("assistant-delta") + kinds.count("assistant-final")

    final = next(text for kind, text in calls if kind == "assistant-final")
    deltas = "".join(text for kind, text in calls if kind == "assistant-delta")
    assert final.strip() and final == deltas
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    audio = b"".join(c.data for c in chunks)
    assert len(audio) > 48 * 300 and chunks[-1].is_final and not chunks[-1].data
    assert sum(c.duration_ms for c in chunks) == pytest.approx(len(audio) / 48)
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert len(done) == 1 and done[0].status in ("completed", "incomplete") and done[0].transcript == final
    assert isinstance(events[-1], ResponseDone)  # run() ended with the exchange


@slow
@pytest.mark.anyio
async def test_run_with_input_faster_than_real_time(server_url: str, question_speech: np.ndarray) -> None:
    """A file sent in one piece, ending right after the words: the SDK closes the turn with silence and
    waits for the server's VAD before deciding the exchange is over."""
    config = RealtimeConfig(instructions=INSTRUCTIONS, max_tokens=10, output_modality="text")
    pcm = question_speech.astype("<i2").tobytes()
    events = [e async for e in RealtimeVoice(config, url=server_url).run([pcm])]
    [user] = [e for e in events if isinstance(e, TranscriptDelta) and e.is_final and e.speaker == "user"]
    assert "sky" in user.text.lower()
    assert isinstance(events[-1], ResponseDone) and events[-1].transcript.strip()


weather_calls: list[str] = []


def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    weather_calls.append(city)
    return f"Weather in {city}: heavy snow, -7 C"


@slow
@pytest.mark.anyio
async def test_python_tool_runs_and_its_result_reaches_the_reply(server_url: str) -> None:
    weather_calls.clear()
    config = RealtimeConfig(
        instructions="Use the tool for weather questions. Answer in one short sentence.",
        tools=[get_weather],
        tool_choice={"type": "function", "name": "get_weather"},
        output_modality="text",
        max_tokens=40,
    )
    voice = RealtimeVoice(config, url=server_url)
    seen: list[ToolCallRequest] = []

    @voice.on_tool_call
    async def log_call(request: ToolCallRequest) -> None:
        seen.append(request)  # returns None: the SDK runs get_weather itself

    events = [e async for e in voice.run(text="What is the weather like in Oslo?")]
    assert len(weather_calls) == 1 and weather_calls[0].strip(), weather_calls
    [request] = [e for e in events if isinstance(e, ToolCallRequest)]
    assert seen == [request] and request.function_name == "get_weather"
    assert request.arguments == {"city": weather_calls[0]}
    [result] = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.call_id == request.call_id and not result.error and "heavy snow" in result.output
    done = [e for e in events if isinstance(e, ResponseDone)]
    # The call's response, then the reply the SDK asked for after sending function_call_output.
    assert len(done) == 2 and done[0].response_id != done[1].response_id
    assert events.index(done[0]) < events.index(request) < events.index(result) < events.index(done[1])
    assert done[1].status in ("completed", "incomplete") and done[1].transcript.strip()
    finals = [e for e in events if isinstance(e, TranscriptDelta) and e.is_final]
    assert finals and events.index(finals[-1]) > events.index(result)


class Player:
    """A sound card: reports 40 ms of playback every 40 ms while audio is buffered."""

    def __init__(self) -> None:
        self.received_ms = 0.0
        self.played_ms = 0.0
        self.heard_enough = asyncio.Event()

    async def play(self, session: Any, interrupted: asyncio.Future[Interrupted]) -> None:
        while not interrupted.done():
            await asyncio.sleep(0.04)
            if self.received_ms - self.played_ms >= 40:
                await asyncio.to_thread(session.played, ms=40)  # as from a sound card's thread
                self.played_ms += 40
            if self.played_ms >= 1200:
                self.heard_enough.set()


@slow
@pytest.mark.anyio
async def test_interruption_truncates_to_what_was_played(
    server_url: str, question_speech: np.ndarray
) -> None:
    config = RealtimeConfig(
        instructions="You are a storyteller. Tell long, detailed stories.",
        max_tokens=300,
        playback=PlaybackMode.MANUAL,
        input_transcription=None,
    )
    voice = RealtimeVoice(config, url=server_url)
    audio = Player()
    text: dict[str, str] = {}
    interrupted: asyncio.Future[Interrupted] = asyncio.get_running_loop().create_future()

    @voice.on_audio
    async def buffer(chunk: bytes) -> None:
        audio.received_ms += len(chunk) / 48

    @voice.on_transcript
    def show(delta: str, is_final: bool) -> None:
        text["so_far"] = text.get("so_far", "") + ("" if is_final else delta)

    @voice.on_interrupted
    def stop(event: Interrupted) -> None:
        if not interrupted.done():
            interrupted.set_result(event)

    async with voice.connect() as session:
        await session.send_text("Tell me a long story about a dragon who learns to sing.")
        player = asyncio.create_task(audio.play(session, interrupted))
        async with asyncio.timeout(60):
            await audio.heard_enough.wait()
            async for chunk in microphone(question_speech, chunk_ms=40, tail_ms=0):
                if interrupted.done():
                    break
                await session.send_audio(chunk)
            event = await interrupted
        await player
        assert event.item_id and 1200 <= event.played_ms <= audio.played_ms
        assert event.played_ms <= event.received_ms  # equal only if generation fell behind playback
        item = await session.retrieve_item(event.item_id)
        content = item["content"][0]
        kept_ms = len(base64.b64decode(content["audio"])) / 48
        assert abs(kept_ms - event.played_ms) <= 2, (kept_ms, event.played_ms)
        # The transcript keeps the words that were heard: a part of the text sent so far, not all of it.
        heard = content["transcript"] or ""
        assert heard.strip() and len(heard) <= len(text["so_far"]), (heard, text)
        assert heard.strip()[:20] in text["so_far"], (heard, text)
        await session.close()  # leave without waiting for the reply to the question


@slow
@pytest.mark.anyio
async def test_bad_key_raises_connection_error(keyed_server_url: str) -> None:
    voice = RealtimeVoice(url=keyed_server_url, api_key="sk-wrong")
    with pytest.raises(RealtimeConnectionError) as info:
        async with voice.connect():
            pass
    assert info.value.code == "invalid_api_key"
    async with RealtimeVoice(url=keyed_server_url, api_key=API_KEY).connect() as session:
        assert session.session_id and session.session["type"] == "realtime"
    refused = RealtimeVoice(RealtimeConfig(tool_choice="sometimes"), url=keyed_server_url, api_key=API_KEY)
    with pytest.raises(RealtimeError) as settings_error:
        async with refused.connect():
            pass
    assert not isinstance(settings_error.value, RealtimeConnectionError)
    assert settings_error.value.param and "tool_choice" in settings_error.value.param


def readme_examples() -> dict[str, str]:
    """The Python code blocks of the README's "Python voice SDK" section, by the heading above each."""
    text = README.read_text()
    start = text.index("### Python voice SDK")
    end = min(text.index(mark, start + 1) for mark in ("\n### ", "\n## "))
    section = text[start:end]
    blocks: dict[str, str] = {}
    heading = ""
    for part in re.split(r"(^#+ [^\n]*$|```python\n.*?```)", section, flags=re.M | re.S):
        if part.startswith("#"):
            heading = part.lstrip("#").strip()
        elif part.startswith("```python"):
            blocks[heading] = part.removeprefix("```python\n").removesuffix("```")
    return blocks


@slow
def test_readme_examples_run_as_written(
    server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's examples, unchanged, against the test server (``LOCALRT_URL``): the complete voice
    assistant, and the "Tools" snippet as a notebook runs it (top-level ``await``): it leaves the
    ``async with`` right after ``send_text``, so it also shows that leaving waits for the reply."""
    monkeypatch.setenv("LOCALRT_URL", server_url)
    examples = readme_examples()
    exec(compile(examples["Example: a voice assistant"], "README voice assistant", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^Assistant: \S", out, flags=re.M), out

    namespace: dict[str, Any] = {}
    code = compile(examples["Tools"], "README tools", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    asyncio.run(eval(code, namespace))
    session = namespace["session"]
    assert session.closed and not session.busy()
    assert {t["name"] for t in session.session["tools"]} == {"get_weather"}
