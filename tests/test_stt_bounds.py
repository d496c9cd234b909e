"""stt_bounds: blockwise log-mel features, and a Whisper job stopped within one native call (with a
faster-whisper stand-in: no model needed; the real model is in ``test_hostile_audio.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from localrt.engines.stt import WhisperEngine
from localrt.engines.stt_bounds import BlockwiseFeatures, Stopped, StopSignal


def test_blockwise_features_match_faster_whisper() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 250 + 77) * 0.1).astype(np.float32)
    audio[: 16000 * 60] *= 0.01
    reference = FeatureExtractor(feature_size=80)(audio)
    blockwise = BlockwiseFeatures(FeatureExtractor(feature_size=80))(audio)
    assert blockwise.shape == reference.shape
    np.testing.assert_allclose(blockwise, reference, atol=1e-5)


def test_blockwise_features_stop_between_blocks() -> None:
    signal, stop = StopSignal(), threading.Event()
    features = BlockwiseFeatures(FeatureExtractor(feature_size=80), signal)
    stop.set()
    with signal.watching(stop), pytest.raises(Stopped):
        features(np.zeros(16000 * 250, np.float32))
    assert features(np.zeros(16000 * 250, np.float32)).shape == (80, 25001)  # no job: no stop


class FakeCTranslate2:
    """Native calls that take ``call_s`` each, counted."""

    def __init__(self, call_s: float) -> None:
        self.call_s = call_s
        self.calls = 0
        self.second_call = threading.Event()

    def _call(self) -> None:
        self.calls += 1
        if self.calls == 2:
            self.second_call.set()
        time.sleep(self.call_s)

    def encode(self, *args: Any, **kwargs: Any) -> None:
        self._call()

    def generate(self, *args: Any, **kwargs: Any) -> None:
        self._call()


class FakeFasterWhisper:
    """faster-whisper's shape on noise: per 30 s window one encoder pass, then one ``generate`` per
    temperature of the fallback schedule, and no segment at the end (the window is skipped)."""

    supported_languages = ("en",)
    max_length = 448

    def __init__(self, call_s: float) -> None:
        self.model = FakeCTranslate2(call_s)
        self.feature_extractor = FeatureExtractor(feature_size=80)

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> tuple[Iterator[Any], Any]:
        assert kwargs["max_new_tokens"] == 220
        windows = -(-len(audio) // (30 * 16000))
        self.feature_extractor(audio)

        def segments() -> Iterator[Any]:
            for _ in range(windows):
                self.model.encode()
                for _temperature in kwargs["temperature"]:
                    self.model.generate()
            yield from ()

        return segments(), SimpleNamespace(language="en", duration=len(audio) / 16000)


@pytest.mark.anyio
async def test_closing_a_stream_stops_whisper_inside_a_window() -> None:
    model = FakeFasterWhisper(call_s=0.2)
    engine = WhisperEngine("whisper-fake", model, device="cpu", compute_type="int8")
    stream = engine.stream(np.zeros(25 * 16000, np.float32))  # one window: 7 calls, 1.4 s
    assert await asyncio.to_thread(model.model.second_call.wait, 10)
    seen = model.model.calls
    await stream.aclose()  # returns at once; the worker stops before its next native call
    assert await stream.wait_done(10)
    assert model.model.calls <= seen + 1, "the job went on past the call in flight"
    engine.close()
