"""WhisperEngine: threading and cancellation with a fake model; accuracy with the real tiny.en."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from audio_helpers import wer

from localrt.audio.pcm import int16_to_float32
from localrt.audio.resample import resample
from localrt.catalog import Catalog
from localrt.engines import Engines
from localrt.engines import stt as stt_module
from localrt.engines.stt import Segment, WhisperEngine, language_name
from localrt.engines.stt_window import MAX_AUDIO_S, short_window
from localrt.errors import InvalidRequest, ModelNotFound
from localrt.settings import Settings

AUDIO = np.zeros(16000, np.float32)


class FakeWhisper:
    """Stands in for faster_whisper.WhisperModel: a lazy generator of ``n`` segments."""

    def __init__(self, n: int = 3, gate_after: int | None = None, segment_s: float = 0.0) -> None:
        self.supported_languages = ["en", "fr"]
        self.n = n
        self.segment_s = segment_s  # decoding time of each segment
        self.gate = threading.Event()
        self.gate_after = gate_after
        self.decoded = 0
        self.threads: set[int] = set()
        self.finished = threading.Event()
        self.started = threading.Event()
        self.kwargs: dict[str, Any] = {}

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[Any], Any]:
        self.kwargs = kwargs
        return self._segments(), SimpleNamespace(
            language=kwargs["language"] or "en", duration=len(audio) / 16000
        )

    def _segments(self) -> Iterator[Any]:
        try:
            for i in range(self.n):
                if self.gate_after is not None and i == self.gate_after:
                    self.started.set()
                    assert self.gate.wait(10), "test did not open the gate"
                self.threads.add(threading.get_ident())
                time.sleep(self.segment_s)
                self.decoded += 1
                yield SimpleNamespace(
                    id=i + 1, seek=0, start=float(i), end=i + 1.0, text=f" part {i}.", tokens=[i],
                    temperature=0.0, avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0, words=None,
                )  # fmt: skip
        finally:
            self.finished.set()


def engine_with(model: FakeWhisper) -> WhisperEngine:
    return WhisperEngine("whisper-fake", model, device="cpu", compute_type="int8")


@pytest.mark.anyio
async def test_segments_are_decoded_in_the_worker_thread() -> None:
    model = FakeWhisper()
    engine = engine_with(model)
    result = await engine.transcribe(AUDIO)
    assert result.text == "part 0. part 1. part 2."
    assert [s.id for s in result.segments] == [1, 2, 3]
    assert result.language == "en" and result.duration == 1.0
    assert model.threads and threading.get_ident() not in model.threads
    engine.close()


@pytest.mark.anyio
async def test_stream_yields_a_segment_before_the_next_is_decoded() -> None:
    model = FakeWhisper(n=2, gate_after=1)
    engine = engine_with(model)
    async with engine.stream(AUDIO) as segments:
        first = await segments.__anext__()
        assert isinstance(first, Segment) and first.text == " part 0."
        assert model.decoded == 1
        model.gate.set()
        rest = [s async for s in segments]
    assert [s.text for s in rest] == [" part 1."]
    engine.close()


@pytest.mark.anyio
async def test_leaving_a_stream_stops_decoding() -> None:
    # Decoding takes time, as a real segment's does; with none, a busy machine may let the worker
    # finish all 1000 before the loop sees the first one, and there would be nothing left to stop.
    model = FakeWhisper(n=1000, segment_s=0.005)
    engine = engine_with(model)
    async with engine.stream(AUDIO) as segments:
        async for _ in segments:
            break
    # Leaving does not wait; the worker stops at the next segment, not after all 1000.
    assert segments.stopped
    assert await segments.wait_done(10)
    assert model.finished.is_set()
    assert model.decoded < 1000
    engine.close()


@pytest.mark.anyio
async def test_cancelling_transcribe_stops_the_worker() -> None:
    model = FakeWhisper(n=2, gate_after=1)
    engine = engine_with(model)
    task = asyncio.create_task(engine.transcribe(AUDIO))
    await asyncio.to_thread(model.started.wait, 5)  # the worker is inside segment 2's decode
    task.cancel()
    await asyncio.sleep(0.05)
    model.gate.set()  # the worker may finish the segment in hand, then must stop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert model.finished.wait(5)
    assert model.decoded <= 2
    engine.close()


@pytest.mark.anyio
async def test_event_loop_stays_free_while_decoding() -> None:
    model = FakeWhisper(n=2, gate_after=1)
    engine = engine_with(model)
    task = asyncio.create_task(engine.transcribe(AUDIO))
    ticks = 0
    for _ in range(10):  # the worker is blocked mid-decode; the loop still runs
        await asyncio.sleep(0.001)
        ticks += 1
    model.gate.set()
    assert (await task).text and ticks == 10
    engine.close()


@pytest.mark.anyio
async def test_options_reach_the_model() -> None:
    model = FakeWhisper(n=1)
    engine = engine_with(model)
    await engine.transcribe(
        AUDIO, language="FR", prompt="Hi", temperature=0.5, word_timestamps=True, task="translate"
    )
    assert model.kwargs["language"] == "fr"
    assert model.kwargs["initial_prompt"] == "Hi"
    assert model.kwargs["temperature"] == 0.5
    assert model.kwargs["word_timestamps"] is True
    assert model.kwargs["task"] == "translate"
    await engine.transcribe(AUDIO)  # temperature 0 = OpenAI's fallback schedule
    assert model.kwargs["temperature"][0] == 0.0 and len(model.kwargs["temperature"]) > 1
    engine.close()


def test_invalid_options_are_invalid_requests() -> None:
    engine = engine_with(FakeWhisper())
    with pytest.raises(InvalidRequest) as lang:
        engine.stream(AUDIO, language="xx")
    assert lang.value.param == "language" and "en, fr" in lang.value.message
    with pytest.raises(InvalidRequest) as temp:
        engine.stream(AUDIO, temperature=1.5)
    assert temp.value.param == "temperature"
    engine.close()


def test_model_resolution(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, stt_model=str(tmp_path / "missing"))  # type: ignore[call-arg]
    with pytest.raises(ModelNotFound):
        WhisperEngine.from_settings(settings, Catalog())
    (tmp_path / "model.bin").write_bytes(b"")
    settings = Settings(_env_file=None, stt_model=str(tmp_path))  # type: ignore[call-arg]
    with pytest.raises(InvalidRequest, match=r"tokenizer\.json"):  # would otherwise hit the network
        WhisperEngine.from_settings(settings, Catalog())


def test_language_names() -> None:
    assert language_name("en") == "english"
    assert language_name("ht") == "haitian creole"
    assert language_name("zz") == "zz"


# --- the real embedded model ------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back after lunch tomorrow.",
]


@pytest.fixture(scope="module")
def speech(engines: Engines) -> list[np.ndarray]:
    """Each sentence spoken by the real Piper voice, as 16 kHz float32."""

    async def make() -> list[np.ndarray]:
        out = []
        for text in SENTENCES:
            chunk = await engines.tts.synthesize(text)
            out.append(resample(int16_to_float32(chunk.samples), chunk.sample_rate, 16000))
        return out

    return asyncio.run(make())


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_model_transcribes_piper_speech(engines: Engines, speech: list[np.ndarray]) -> None:
    engine: WhisperEngine = engines.stt
    assert (engine.device, engine.compute_type) in {("cpu", "int8"), ("cuda", "float16")}
    for text, audio in zip(SENTENCES, speech, strict=True):
        result = await engine.transcribe(audio, word_timestamps=True)
        assert wer(text, result.text) < 0.15, result.text
        assert result.language == "en"
        assert result.duration == pytest.approx(len(audio) / 16000)
        words = [w for s in result.segments for w in s.words or []]
        assert words and all(a.start <= b.start for a, b in itertools.pairwise(words))
        assert all(0 <= w.start <= w.end <= result.duration + 0.5 for w in words)


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_model_stream_matches_transcribe(engines: Engines, speech: list[np.ndarray]) -> None:
    audio = np.concatenate([speech[0], np.zeros(8000, np.float32), speech[1]])
    async with engines.stt.stream(audio) as segments:
        streamed = [s async for s in segments]
    whole = await engines.stt.transcribe(audio)
    assert "".join(s.text for s in streamed).strip() == whole.text
    assert wer(" ".join(SENTENCES), whole.text) < 0.15


@pytest.mark.slow
@pytest.mark.anyio
async def test_text_only_decodes_a_short_clip_in_the_short_window(
    engines: Engines, speech: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A realtime turn's transcription (text_only) takes the 12 s window and hears the same words as the
    full 30 s window; a clip longer than MAX_AUDIO_S takes the full window."""
    results: list[Any] = []

    def spy(*args: Any) -> Any:
        results.append(short_window(*args))
        return results[-1]

    monkeypatch.setattr(stt_module, "short_window", spy)
    for audio in speech:
        fast = await engines.stt.transcribe(audio, text_only=True)
        full = await engines.stt.transcribe(audio)
        assert results.pop() is not None
        assert _words(fast.text) == _words(full.text)
        assert [(s.start, s.end) for s in fast.segments] == [(0.0, round(len(audio) / 16000, 3))]
    long = np.concatenate([speech[0], np.zeros(int(16000 * MAX_AUDIO_S), np.float32)])
    assert wer(SENTENCES[0], (await engines.stt.transcribe(long, text_only=True)).text) < 0.15
    assert results == [None]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_looping_short_window_falls_back_to_the_full_window(
    engines: Engines, speech: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whisper starting the utterance over in the short window (it can) is refused: the full window
    transcribes the clip instead."""
    model = engines.stt._model.model
    real = model.generate
    calls: list[int] = []

    def looping(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append(kwargs["max_length"])
        if len(calls) > 1:
            return result
        ids = result[0].sequences_ids[0]
        return [SimpleNamespace(sequences_ids=[ids + ids[:4]], scores=[-0.1], no_speech_prob=0.0)]

    monkeypatch.setattr(model, "generate", looping)
    results: list[Any] = []
    monkeypatch.setattr(
        stt_module, "short_window", lambda *a: results.append(short_window(*a)) or results[-1]
    )
    text = (await engines.stt.transcribe(speech[1], text_only=True)).text
    assert results == [None] and len(calls) >= 2  # refused, then the full window
    assert wer(SENTENCES[1], text) < 0.15


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


@pytest.mark.slow
@pytest.mark.anyio
async def test_text_only_noise_and_silence_stay_bounded(engines: Engines) -> None:
    """Hostile turn audio for the short window: loud noise and digital silence give a short text (or
    none), never a runaway decode; a clip just past MAX_AUDIO_S takes the 30 s window."""
    rng = np.random.default_rng(7)
    for audio in (
        np.clip(rng.standard_normal(16000 * 3) * 0.5, -1, 1).astype(np.float32),
        np.zeros(16000 * 2, np.float32),
        np.clip(rng.standard_normal(int(16000 * (MAX_AUDIO_S + 0.5))) * 0.5, -1, 1).astype(np.float32),
    ):
        result = await engines.stt.transcribe(audio, text_only=True)
        assert len(result.text.split()) <= 40, result.text
        assert all(s.end <= len(audio) / 16000 + 0.5 for s in result.segments)
