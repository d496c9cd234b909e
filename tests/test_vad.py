"""silero VAD from its ONNX file: one probability per 32 ms window, each window evaluated once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from localrt.catalog import Catalog, embedded_vad
from localrt.engines.vad import WINDOW, SileroVAD
from localrt.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vad() -> Iterator[SileroVAD]:
    path = embedded_vad()
    if path is None:
        pytest.skip("silero-vad is not installed")
    engine = SileroVAD.from_settings(Settings(_env_file=None), Catalog(vad=path))  # type: ignore[call-arg]
    yield engine
    engine.close()


def test_missing_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no VAD model"):
        SileroVAD.from_settings(Settings(_env_file=None), Catalog())  # type: ignore[call-arg]


def test_silence_is_not_speech(vad: SileroVAD) -> None:
    stream = vad.stream()
    probs = stream.feed(np.zeros(16000, np.float32))
    assert len(probs) == 16000 // WINDOW
    assert max(probs) < 0.1


def test_windows_are_evaluated_once_across_uneven_appends(vad: SileroVAD) -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    whole = vad.stream().feed(audio)
    stream = vad.stream()
    pieces: list[float] = []
    for start in range(0, audio.size, 700):  # appends that do not line up with windows
        pieces.extend(stream.feed(audio[start : start + 700]))
    assert stream.windows == len(whole) == audio.size // WINDOW
    np.testing.assert_allclose(pieces, whole, atol=1e-6)


@pytest.mark.anyio
async def test_speech_is_detected(vad: SileroVAD) -> None:
    from localrt.audio.resample import resample
    from localrt.catalog import scan
    from localrt.engines.tts import PiperEngine

    tts = PiperEngine.from_settings(Settings(_env_file=None), scan(None))  # type: ignore[call-arg]
    try:
        chunk = await tts.synthesize("The quick brown fox jumps over the lazy dog.")
    finally:
        tts.close()
    speech = resample(chunk.samples.astype(np.float32) / 32768, chunk.sample_rate, 16000)
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    probs = await vad.stream().process(audio)
    lead, tail = probs[: 8000 // WINDOW - 1], probs[-(8000 // WINDOW) + 8 :]
    middle = probs[8000 // WINDOW + 3 : -(8000 // WINDOW) - 3]
    assert max(lead) < 0.3
    assert np.mean(np.array(middle) > 0.5) > 0.6
    assert max(tail) < 0.3
