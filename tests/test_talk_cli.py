"""``localrt talk`` and ``localrt chat``, run as users run them: the CLI in a subprocess against a real server.

The voice turn feeds Piper's spoken question as the microphone (``--input``), and checks that the reply
saved with ``--output`` is speech that Whisper transcribes to the reply text the command printed. The
audio-device failures (no PortAudio, no device) are checked in-process with the import of ``sounddevice``
made to fail the way it fails on such machines.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import io
import subprocess
import sys
import threading
import time
import types
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from localrt.audio.pcm import float32_to_int16
from localrt.audio.resample import resample
from localrt.chat_cli import ChatOptions, ChatSession
from localrt.engines import Engines
from localrt.serving import free_port
from localrt.talk import Talk, TalkOptions
from localrt.talk import main as talk_main
from tests.audio_helpers import tone, wer

QUESTION = "What color is the sky?"
INSTRUCTIONS = "You are a helpful assistant. Answer in English, in one short sentence."


def localrt(
    args: Sequence[str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localrt", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as src:
        assert src.getnchannels() == 1 and src.getsampwidth() == 2
        return np.frombuffer(src.readframes(src.getnframes()), "<i2"), src.getframerate()


def dead_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port('127.0.0.1')}"


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


# -- talk ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.anyio
async def test_talk_file_turn_reply_audio_matches_printed_text(
    engines: Engines, server_url: str, tmp_path: Path
) -> None:
    assert engines.tts is not None and engines.stt is not None
    spoken = await engines.tts.synthesize(QUESTION)  # Piper's own rate (22.05 kHz): talk resamples it
    question, reply = tmp_path / "q.wav", tmp_path / "a.wav"
    write_wav(question, spoken.samples, spoken.sample_rate)
    url = server_url.replace("http://", "ws://")
    proc = localrt(
        [
            "talk",
            "--url",
            url,
            "--input",
            str(question),
            "--output",
            str(reply),
            "--instructions",
            INSTRUCTIONS,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    lines = proc.stdout.splitlines()
    said = [line.removeprefix("you: ") for line in lines if line.startswith("you: ")]
    answers = [line.removeprefix("assistant: ") for line in lines if line.startswith("assistant: ")]
    assert said and wer(QUESTION, said[-1]) < 0.35, proc.stdout
    assert answers and answers[-1].strip(), proc.stdout
    samples, rate = read_wav(reply)
    assert rate == 24000 and samples.size > 24000 // 2, "reply audio missing"
    heard = await engines.stt.transcribe(resample(samples.astype(np.float32) / 32768, 24000, 16000))
    assert wer(answers[-1], heard.text) < 0.35, (answers[-1], heard.text)


def test_talk_without_a_server_is_one_clean_line(tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, float32_to_int16(tone(440, 0.5, 16000)), 16000)
    proc = localrt(
        ["talk", "--url", dead_url("ws"), "--input", str(question), "--output", str(tmp_path / "a.wav")],
        timeout=60,
    )
    assert proc.returncode != 0
    no_traceback(proc)
    assert proc.stderr.startswith("localrt talk:") and "connect" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_talk_unreadable_input_file(tmp_path: Path) -> None:
    bad = tmp_path / "q.wav"
    bad.write_bytes(b"not audio at all")
    for path in (bad, tmp_path / "missing.wav"):
        proc = localrt(["talk", "--input", str(path), "--output", str(tmp_path / "a.wav")], timeout=60)
        assert proc.returncode == 2
        no_traceback(proc)
        assert proc.stderr.startswith("localrt talk:") and str(path) in proc.stderr, proc.stderr


class _NoPortAudio(importlib.abc.MetaPathFinder):
    """Makes ``import sounddevice`` fail as it does where the PortAudio library is missing."""

    def find_spec(
        self, name: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_talk_without_portaudio_is_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    # Only --output given: the microphone is needed, so sounddevice is imported (and fails).
    code = talk_main(TalkOptions(url=dead_url("ws"), output="unused.wav"))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("localrt talk: ") and "PortAudio" in err and len(err.strip().splitlines()) == 1


def test_talk_without_an_audio_device_is_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def query_devices(device: object = None, kind: str | None = None) -> object:
        raise PortAudioError("Error querying device -1")

    fake.PortAudioError = PortAudioError  # type: ignore[attr-defined]
    fake.query_devices = query_devices  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    code = talk_main(TalkOptions(url=dead_url("ws")))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("localrt talk: no audio device") and len(err.strip().splitlines()) == 1, err


class FakeDevices:
    """A sound card in Python, as a stand-in ``sounddevice`` module: a microphone that plays ``script``
    at real-time pace and a speaker that records what its callback was given, each driven by its own
    thread like PortAudio's. ``barge_in`` (samples) is spoken once the speaker has played ``after_s``
    seconds of sound."""

    RATE = 16000  # the devices' default rate: talk resamples both ways

    def __init__(self, script: np.ndarray, barge_in: np.ndarray, after_s: float) -> None:
        self.script, self.barge_in, self.after_s = script, barge_in, after_s
        self.played: list[np.ndarray] = []
        self.heard_at: float | None = None  # seconds of sound played when the barge-in began
        self.threads: list[threading.Thread] = []

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("sounddevice")
        devices = self

        class Stream:
            def __init__(self, samplerate: float, callback: Any, blocksize: int = 0, **_: Any) -> None:
                self.rate, self.callback = int(samplerate), callback
                self.block = blocksize or self.rate // 50
                self.latency = 0.0
                self.running = threading.Event()

            def start(self) -> None:
                self.running.set()
                thread = threading.Thread(target=self.pump, daemon=True)
                devices.threads.append(thread)
                thread.start()

            def stop(self) -> None:
                self.running.clear()

            def close(self) -> None:
                self.running.clear()

            def pump(self) -> None:
                raise NotImplementedError

        class RawInputStream(Stream):
            def pump(self) -> None:
                pos, start, n = 0, time.monotonic(), 0
                pending = devices.script
                while self.running.is_set():
                    if devices.heard_at is None and devices.sound_played() >= devices.after_s:
                        devices.heard_at = devices.sound_played()
                        pending, pos = devices.barge_in, 0
                    block = pending[pos : pos + self.block]
                    block = np.concatenate([block, np.zeros(self.block - block.size, np.int16)])
                    pos += self.block
                    self.callback(block.astype("<i2").tobytes(), self.block, None, None)
                    n += 1
                    time.sleep(max(0.0, start + n * self.block / self.rate - time.monotonic()))

        class OutputStream(Stream):
            def pump(self) -> None:
                start, n = time.monotonic(), 0
                while self.running.is_set():
                    out = np.zeros((self.block, 1), np.int16)
                    self.callback(out, self.block, None, None)
                    devices.played.append(out[:, 0].copy())
                    n += 1
                    time.sleep(max(0.0, start + n * self.block / self.rate - time.monotonic()))

        def query_devices(device: object = None, kind: str | None = None) -> dict[str, Any]:
            return {"name": "fake", "default_samplerate": float(FakeDevices.RATE)}

        fake.PortAudioError = type("PortAudioError", (Exception,), {})  # type: ignore[attr-defined]
        fake.query_devices = query_devices  # type: ignore[attr-defined]
        fake.RawInputStream = RawInputStream  # type: ignore[attr-defined]
        fake.OutputStream = OutputStream  # type: ignore[attr-defined]
        return fake

    def sound_played(self) -> float:
        """Seconds of non-silent output so far."""
        return sum(int(np.count_nonzero(b)) for b in list(self.played)) / self.RATE


@pytest.mark.slow
@pytest.mark.anyio
async def test_talk_live_devices_barge_in(
    engines: Engines, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = FakeDevices.RATE
    assert engines.tts is not None
    question = await engines.tts.synthesize("Tell me a long story about a dog.")
    again = await engines.tts.synthesize(QUESTION)

    def as_rate(chunk: Any) -> np.ndarray:
        return resample(chunk.samples, chunk.sample_rate, rate).astype(np.int16)

    script = np.concatenate([np.zeros(rate // 2, np.int16), as_rate(question)])
    devices = FakeDevices(script, as_rate(again), after_s=1.0)
    monkeypatch.setitem(sys.modules, "sounddevice", devices.module())
    out, err = io.StringIO(), io.StringIO()
    talk = Talk(TalkOptions(url=server_url), out, err)

    async def stop_after_barge_in() -> None:
        with anyio.fail_after(60):
            while not talk.interruptions:  # noqa: ASYNC110 (Talk has no event to wait on)
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)
        talk.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_after_barge_in)
        code = await anyio.to_thread.run_sync(lambda: asyncio.run(talk.run()))
    assert code == 0, err.getvalue()
    assert "[interrupted: " in out.getvalue() and "you: " in out.getvalue(), out.getvalue()
    cut = talk.interruptions[0]
    assert devices.heard_at is not None
    # Cut at what the speaker played: after the barge-in began, before all that was received.
    assert devices.heard_at * 1000 - 100 <= cut.played_ms < cut.received_ms, (cut, devices.heard_at)
    assert cut.played_ms <= devices.sound_played() * 1000 + 300, (cut, devices.sound_played())
    for thread in devices.threads:
        thread.join(2)


# -- chat ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_chat_piped_question_streams_a_reply(server_url: str) -> None:
    proc = localrt(["chat", "--url", server_url, "--max-tokens", "24"], stdin="What is 2+2?\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    reply = proc.stdout.split("assistant> ", 1)[1].split("\n", 1)[0]
    assert reply.strip(), proc.stdout


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


@pytest.mark.slow
def test_chat_streams_and_keeps_history(server_url: str) -> None:
    out, err = _Writes(), io.StringIO()
    session = ChatSession(ChatOptions(server_url, system="Answer briefly.", max_tokens=16), out, err)
    try:
        session.connect()
        assert session.turn("My name is Ada.") and session.turn("What is my name?"), err.getvalue()
    finally:
        session.close()
    roles = [m["role"] for m in session.history]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert session.history[3]["content"] == "What is my name?"
    # Streamed: the first reply came in several writes, between its prompt and the next one.
    first = out.writes.index("assistant> ")
    pieces = out.writes[first + 1 : out.writes.index("assistant> ", first + 1)]
    assert len([p for p in pieces if p.strip()]) > 1, pieces


def test_chat_without_a_server_is_one_clean_line() -> None:
    proc = localrt(["chat", "--url", dead_url("http")], stdin="hello\n", timeout=60)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.startswith("localrt chat:") and "connect" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
