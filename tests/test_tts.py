"""PiperEngine: sentences, voices, threading and cancellation with a fake voice; the real voice too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from localrt.catalog import embedded_voice
from localrt.engines import Engines
from localrt.engines.tts import OPENAI_VOICES, AudioChunk, PiperEngine, Voice, read_voice, split_sentences
from localrt.errors import InvalidRequest

JOE = Voice("en_US-joe-medium", Path("joe.onnx"), 22050, "en_US")
AMY = Voice("en_US-amy-low", Path("amy.onnx"), 16000, "en_US")


class FakeVoice:
    """Stands in for piper.PiperVoice: 100 samples per character, optionally gated on a sentence."""

    def __init__(self, voice: Voice, gate_on: str | None = None) -> None:
        self.config = SimpleNamespace(sample_rate=voice.sample_rate, length_scale=1.0)
        self.gate = threading.Event()
        self.gate_on = gate_on
        self.spoken: list[str] = []
        self.configs: list[Any] = []
        self.threads: set[int] = set()

    def synthesize(self, text: str, syn_config: Any = None) -> Iterator[Any]:
        if text == self.gate_on:
            assert self.gate.wait(10), "test did not open the gate"
        self.threads.add(threading.get_ident())
        self.spoken.append(text)
        self.configs.append(syn_config)
        yield SimpleNamespace(audio_int16_array=np.full(100 * len(text), 7, np.int16))


def engine_with(fake: dict[str, FakeVoice] | None = None, **kwargs: Any) -> PiperEngine:
    fakes = {} if fake is None else fake

    def load(voice: Voice) -> FakeVoice:
        return fakes.setdefault(voice.id, FakeVoice(voice))

    return PiperEngine([JOE, AMY], JOE.id, load_voice=load, **kwargs)


def test_split_sentences() -> None:
    text = 'Hello there. How are you?  "Fine," she said!\nA list item\n\nPi is 3.14 today… Done'
    assert split_sentences(text) == [
        "Hello there.", "How are you?", '"Fine," she said!', "A list item", "Pi is 3.14 today…", "Done",
    ]  # fmt: skip
    long = "word " * 200
    parts = split_sentences(long, max_chars=100)
    assert all(len(p) <= 100 for p in parts) and " ".join(parts).split() == long.split()
    clauses = split_sentences("one two, three four, five six", max_chars=20)
    assert clauses == ["one two, three four,", "five six"]
    assert split_sentences("   \n ") == []


def test_resolve_voice() -> None:
    engine = engine_with(voice_map={"Nova": AMY.id})
    assert engine.resolve_voice(None) == JOE
    assert engine.resolve_voice(AMY.id) == AMY
    assert engine.resolve_voice("nova") == AMY  # mapped (case-insensitive)
    assert engine.resolve_voice("alloy") == JOE  # unmapped OpenAI name -> default
    assert all(engine.resolve_voice(name) in (JOE, AMY) for name in OPENAI_VOICES)
    with pytest.raises(InvalidRequest) as info:
        engine.resolve_voice("nobody")
    assert info.value.param == "voice"
    assert JOE.id in info.value.message and AMY.id in info.value.message
    assert engine.voices() == [AMY, JOE]
    assert engine.model_ids()[:2] == ["piper", "tts-1"] and JOE.id in engine.model_ids()
    engine.close()


def test_bad_configuration() -> None:
    with pytest.raises(InvalidRequest) as mapped:
        engine_with(voice_map={"alloy": "missing-voice"})
    assert mapped.value.param == "voice_map"
    with pytest.raises(InvalidRequest) as default:
        PiperEngine([JOE], "missing-voice")
    assert default.value.param == "tts_voice"


def test_bad_requests() -> None:
    engine = engine_with()
    with pytest.raises(InvalidRequest) as empty:
        engine.stream("  \n")
    assert empty.value.param == "input"
    for speed in (0.1, 4.5):
        with pytest.raises(InvalidRequest) as slow:
            engine.stream("Hi.", speed=speed)
        assert slow.value.param == "speed"
    engine.close()


@pytest.mark.anyio
async def test_one_chunk_per_sentence_from_the_worker_thread() -> None:
    fakes: dict[str, FakeVoice] = {}
    engine = engine_with(fakes)
    async with engine.stream("First one. Second one! Third?", voice="alloy") as stream:
        chunks = [c async for c in stream]
    assert [c.text for c in chunks] == ["First one.", "Second one!", "Third?"]
    assert all(c.sample_rate == 22050 and c.samples.dtype == np.int16 for c in chunks)
    assert [len(c.samples) for c in chunks] == [1000, 1100, 600]
    assert threading.get_ident() not in fakes[JOE.id].threads
    engine.close()


@pytest.mark.anyio
async def test_first_chunk_arrives_before_later_sentences_are_synthesized() -> None:
    fakes = {JOE.id: FakeVoice(JOE, gate_on="Second.")}
    engine = engine_with(fakes)
    async with engine.stream("First. Second.") as stream:
        first = await stream.__anext__()
        assert first.text == "First."
        assert fakes[JOE.id].spoken == ["First."]  # the second is still waiting for the gate
        fakes[JOE.id].gate.set()
        assert [c.text async for c in stream] == ["Second."]
    engine.close()


@pytest.mark.anyio
async def test_leaving_the_stream_stops_synthesis() -> None:
    fakes = {JOE.id: FakeVoice(JOE, gate_on="Two.")}
    engine = engine_with(fakes)
    text = " ".join(["One.", "Two."] + [f"Sentence {i}." for i in range(50)])
    async with engine.stream(text) as stream:
        async for _ in stream:
            fakes[JOE.id].gate.set()
            break
    # Leaving did not wait; the worker finishes at most the sentence in hand and stops.
    assert stream.stopped
    assert await stream.wait_done(10)
    assert fakes[JOE.id].spoken in (["One."], ["One.", "Two."])
    engine.close()


@pytest.mark.anyio
async def test_speed_sets_length_scale_and_synthesize_joins() -> None:
    fakes: dict[str, FakeVoice] = {}
    engine = engine_with(fakes, noise_w_scale=0.0)
    chunk = await engine.synthesize("Ab. Cd.", voice=AMY.id, speed=2.0)
    assert isinstance(chunk, AudioChunk)
    assert chunk.text == "Ab. Cd." and chunk.sample_rate == 16000 and len(chunk.samples) == 600
    configs = fakes[AMY.id].configs
    assert [c.length_scale for c in configs] == [0.5, 0.5]
    assert all(c.noise_w_scale == 0.0 for c in configs)
    engine.close()


def test_read_voice_config() -> None:
    path = embedded_voice()
    assert path is not None
    voice = read_voice("en_US-joe-medium", path)
    assert (voice.sample_rate, voice.language) == (22050, "en_US")


# --- the real embedded voice ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_voice_streams_sentences(engines: Engines) -> None:
    engine: PiperEngine = engines.tts
    async with engine.stream("Good morning. It is a fine day. Goodbye!", voice="alloy") as stream:
        chunks = [c async for c in stream]
    assert [c.text for c in chunks] == ["Good morning.", "It is a fine day.", "Goodbye!"]
    for chunk in chunks:
        assert chunk.sample_rate == 22050 and chunk.samples.dtype == np.int16
        assert 0.3 * 22050 < len(chunk.samples) < 3 * 22050
        assert np.abs(chunk.samples).max() > 10000  # Piper normalizes each sentence's volume


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_voice_speed(engines: Engines) -> None:
    text = "This sentence is spoken at different speeds."
    fast = await engines.tts.synthesize(text, speed=2.0)
    slow = await engines.tts.synthesize(text, speed=0.5)
    assert 2.5 < len(slow.samples) / len(fast.samples) < 6
