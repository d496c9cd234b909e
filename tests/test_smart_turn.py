"""Smart Turn v3.2 (semantic_vad's end-of-turn model) from the ONNX file in the pipecat-ai wheel."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from localrt.catalog import Catalog, embedded_smart_turn, embedded_vad
from localrt.engines import Engines, load_engines
from localrt.engines.scheduler import EngineClosed
from localrt.engines.smart_turn import SHA256, WINDOW, SmartTurn, last_window, sha256_of
from localrt.errors import InvalidRequest
from localrt.settings import Settings
from tests.servers import make_settings

COMPLETE = "What color is the sky on a clear day?"
INCOMPLETE = "So what I was thinking is that maybe we could"


@pytest.fixture(scope="module")
def turn() -> Iterator[SmartTurn]:
    path = embedded_smart_turn()
    if path is None:
        pytest.skip("pipecat-ai is not installed (pip install --no-deps pipecat-ai==1.14.0)")
    engine = SmartTurn.from_settings(make_settings(), Catalog(turn=path))
    yield engine
    engine.close()


def speech(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def test_threshold_is_a_probability() -> None:
    assert make_settings().semantic_vad_threshold == 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            make_settings(semantic_vad_threshold=bad)


def test_missing_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pip install --no-deps pipecat-ai"):
        SmartTurn.from_settings(make_settings(), Catalog())


@pytest.mark.slow
def test_embedded_file_is_checked_and_pipecat_never_imported(turn: SmartTurn) -> None:
    assert sha256_of(turn.path) == SHA256 and turn.id == "smart-turn-v3.2"
    assert "pipecat" not in sys.modules
    with pytest.raises(ValueError, match="sha256"):
        SmartTurn.load(turn.path, sha256="0" * 64)
    vad = embedded_vad()  # an ONNX file with the wrong input: refused as a user-supplied turn model
    if vad is not None:
        with pytest.raises(ValueError, match="not a Smart Turn model"):
            SmartTurn.from_settings(make_settings(turn_model=vad), Catalog())


@pytest.mark.slow
def test_features_are_left_padded_to_8_seconds(turn: SmartTurn) -> None:
    audio = speech(np.random.default_rng(0), 1.0)
    features = turn.features(audio)
    assert features.shape == (1, 80, 800) and features.dtype == np.float32
    # Left padding with zeros: leading silence changes nothing, and the first 7 s are one flat frame.
    np.testing.assert_array_equal(
        features, turn.features(np.concatenate([np.zeros(16000, np.float32), audio]))
    )
    assert np.ptp(features[0, :, :650], axis=1).max() == 0.0
    assert np.ptp(features[0, :, 720:], axis=1).min() > 0.0


@pytest.mark.slow
@pytest.mark.anyio
async def test_only_the_last_8_seconds_count(turn: SmartTurn) -> None:
    rng = np.random.default_rng(1)
    a = speech(rng, 12.0)
    b = a.copy()
    b[: 4 * 16000] = speech(rng, 4.0)  # differs only before the last 8 s
    tail = last_window(a)
    assert tail.size == WINDOW and not np.shares_memory(tail, a)  # a copy of the tail, nothing more
    assert turn.features(tail).shape == (1, 80, 800)
    p = await turn.complete_probability(a)
    assert 0.0 <= p <= 1.0
    assert await turn.complete_probability(b) == p


@pytest.mark.slow
@pytest.mark.anyio
async def test_bad_audio_is_refused(turn: SmartTurn) -> None:
    bad: list[np.ndarray] = [
        np.zeros(0, np.float32),
        np.zeros((2, 1600), np.float32),
        np.array([0.1, np.nan, 0.2], np.float32),
        np.array([np.inf] * 10, np.float32),
        np.zeros(1600, np.float64),
        np.zeros(1600, np.int16),
    ]
    for audio in bad:
        with pytest.raises(InvalidRequest):
            await turn.complete_probability(audio)
    # A NaN before the last 8 s is never read: it is not refused.
    long = np.zeros(9 * 16000, np.float32)
    long[0] = np.nan
    assert 0.0 <= await turn.complete_probability(long) <= 1.0


@pytest.mark.slow
@pytest.mark.anyio
async def test_real_speech(engines: Engines, turn: SmartTurn) -> None:
    from localrt.audio.resample import resample

    assert isinstance(engines.turn, SmartTurn)  # load_engines loads it with the defaults
    assert "turn" in [s.engine for s in engines.stats()]
    assert engines.tts is not None
    probabilities: dict[str, float] = {}
    for text in (COMPLETE, INCOMPLETE):
        chunk = await engines.tts.synthesize(text)
        audio = resample(chunk.samples.astype(np.float32) / 32768, chunk.sample_rate, 16000)
        audio = np.concatenate([audio.astype(np.float32), np.zeros(4000, np.float32)])  # + 250 ms silence
        start = time.perf_counter()
        probabilities[text] = await turn.complete_probability(audio)
        print(f"{text!r}: {probabilities[text]:.3f} in {(time.perf_counter() - start) * 1000:.0f} ms")
    assert probabilities[COMPLETE] > 0.5
    assert probabilities[INCOMPLETE] < 0.5


@pytest.mark.slow
@pytest.mark.anyio
async def test_closed_engine_refuses(turn: SmartTurn) -> None:
    other = SmartTurn.load(turn.path)
    other.close()
    with pytest.raises(EngineClosed):
        await other.complete_probability(np.zeros(1600, np.float32))


@pytest.mark.slow
def test_no_vad_no_turn_model() -> None:
    settings: Settings = make_settings(load_stt=False, load_tts=False, load_vad=False)
    assert settings.load_turn  # but without a VAD there are no pauses to judge: not loaded
    engines = load_engines(settings)
    try:
        assert engines.vad is None and engines.turn is None
    finally:
        engines.close()
