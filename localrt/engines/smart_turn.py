"""Semantic end-of-turn detection with Smart Turn v3.2, run from its ONNX file on onnxruntime.

Design:
- The model (BSD-2-Clause, 8.7 MB int8) ships inside the ``pipecat-ai`` wheel, installed with
  ``--no-deps`` for the file alone: ``pipecat`` is never imported (its ``__init__`` needs loguru and its
  requirements clash with ours). :func:`localrt.catalog.embedded_smart_turn` finds the file from the
  package metadata; its sha256 is checked once at load.
- Input ``input_features`` float32 [1, 80, 800]: the Whisper log-mel features of the last 8 s of 16 kHz
  audio. As in the model's own inference code, the audio is cut to its last 8 s or left-padded with
  zeros to exactly 8 s, then the 8 s buffer (padding included) is normalised to zero mean and unit
  variance, then faster-whisper's ``FeatureExtractor(feature_size=80, chunk_length=8)`` computes the
  features (they match the reference implementation to 3e-6). Output: P(turn complete), a sigmoid
  probability already.
- :class:`SmartTurn` is one ``onnxruntime.InferenceSession`` (1 thread) behind its own
  :class:`~localrt.engines.scheduler.Scheduler` (one worker). Every call is one REALTIME job, features
  included, so nothing but an 8 s copy runs on the event loop. A call costs about 25 ms of features and
  25-70 ms of model on one core, whatever the length of the turn: only its last 8 s is ever read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from localrt.catalog import Catalog
from localrt.engines.scheduler import JobControl, Priority, Scheduler, SchedulerStats
from localrt.errors import InvalidRequest
from localrt.settings import Settings

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW = WINDOW_S * SAMPLE_RATE  # samples the model reads: the last 8 s
N_MELS = 80
FRAMES = 800  # 10 ms hops over 8 s
INPUT = "input_features"
EMBEDDED_ID = "smart-turn-v3.2"
SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
INSTALL_HINT = "pip install --no-deps pipecat-ai==1.14.0 (make install does this)"
# Calls waiting. Each is 50-100 ms of CPU and one session asks at a time: a deeper queue would only
# deliver answers after the eagerness cap has ended the turn anyway, so beyond it callers hear QueueFull
# at once and fall back on the silence cap.
MAX_QUEUE = 16


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def last_window(audio: np.ndarray) -> np.ndarray:
    """A copy of the last 8 s of ``audio`` (1-D float32, non-empty, finite); InvalidRequest otherwise.
    Only that tail is read or copied, however long the turn."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
        raise InvalidRequest("Smart Turn takes 1-D float32 audio at 16 kHz.", param="audio")
    if audio.size == 0:
        raise InvalidRequest("Smart Turn got no audio.", param="audio")
    tail = audio[-WINDOW:].copy()
    if not np.isfinite(tail).all():
        raise InvalidRequest("Smart Turn got audio with NaN or infinite samples.", param="audio")
    return tail


def _whisper_features() -> Any:
    """faster-whisper's ``FeatureExtractor`` class (plain numpy), loaded from its own file: importing
    ``faster_whisper`` would run the package's ``__init__``, which loads CTranslate2, and a thin realtime
    front (remote engines, no Whisper) must not pay for that to run Smart Turn."""
    import sys

    name = "localrt._faster_whisper_features"
    module = sys.modules.get(name)
    if module is None:
        package = importlib.util.find_spec("faster_whisper")  # located, not imported
        if package is None or package.origin is None:
            raise RuntimeError("faster-whisper is not installed: Smart Turn needs its feature extractor")
        spec = importlib.util.spec_from_file_location(
            name, Path(package.origin).parent / "feature_extractor.py"
        )
        if spec is None or spec.loader is None:
            raise RuntimeError("faster-whisper's feature_extractor.py was not found")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module.FeatureExtractor


class SmartTurn:
    """The Smart Turn model, shared by every session: :meth:`complete_probability` of a turn's audio."""

    sample_rate = SAMPLE_RATE

    def __init__(self, path: Path, session: Any, *, model_id: str = EMBEDDED_ID, max_queue: int = MAX_QUEUE):
        feature_extractor = _whisper_features()

        self.path = path
        self.id = model_id
        self._session = session
        self._output = session.get_outputs()[0].name
        self._extractor = feature_extractor(
            feature_size=N_MELS, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S
        )
        self.scheduler = Scheduler("turn", slots=1, max_queue=max_queue, shares_cpu=False)

    @classmethod
    def load(cls, path: Path, *, sha256: str | None = SHA256, model_id: str | None = None) -> SmartTurn:
        """Load an ONNX file (blocking). ``sha256``: the file's expected digest (None: not checked)."""
        import onnxruntime

        if not path.is_file():
            raise ValueError(f"Smart Turn model {path} does not exist")
        if sha256 is not None and (actual := sha256_of(path)) != sha256:
            raise ValueError(
                f"Smart Turn model {path} has sha256 {actual}, expected {sha256}: reinstall it "
                f"({INSTALL_HINT}) or set turn_model to a file of your own"
            )
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in session.get_inputs()}
        if INPUT not in inputs or len(inputs[INPUT].shape) != 3:
            raise ValueError(
                f"{path} is not a Smart Turn model: it needs a 3-D input {INPUT!r} [batch, 80, 800], "
                f"it has {sorted(inputs)}"
            )
        logger.info("loaded Smart Turn from %s", path)
        return cls(path, session, model_id=model_id or (EMBEDDED_ID if sha256 == SHA256 else path.stem))

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> SmartTurn:
        if settings.turn_model is not None:
            return cls.load(settings.turn_model, sha256=None)
        if catalog.turn is None:
            raise ValueError(
                f"no Smart Turn model: install the embedded default ({INSTALL_HINT}), set turn_model, "
                "or set load_turn=false (semantic_vad then falls back on silence)"
            )
        return cls.load(catalog.turn)

    async def complete_probability(self, audio: np.ndarray) -> float:
        """P(turn complete) from the last 8 s of the turn's 16 kHz float32 audio: a REALTIME job.
        Raises InvalidRequest (bad audio), QueueFull, EngineClosed."""
        tail = last_window(audio)

        def produce(control: JobControl) -> list[float]:
            return [self.probability(tail)]

        async with self.scheduler.submit(produce, priority=Priority.REALTIME) as job:
            async for probability in job:
                return probability
        raise RuntimeError("the Smart Turn job ended without a result")  # cancelled: not reached

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and running job with EngineClosed (blocking, bounded)."""
        self.scheduler.close()

    # -- worker thread ---------------------------------------------------------------------------------
    def features(self, tail: np.ndarray) -> np.ndarray:
        """float32 [1, 80, 800] for at most 8 s of finite float32 audio (blocking, ~25 ms)."""
        x = np.zeros(WINDOW, dtype=np.float32)
        tail = tail[-WINDOW:]
        x[WINDOW - tail.size :] = tail  # left padding, as the model was trained
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self._extractor(x.astype(np.float32), padding=0)[:, :FRAMES]
        if mel.shape[1] < FRAMES:
            mel = np.pad(mel, ((0, 0), (0, FRAMES - mel.shape[1])))
        return np.ascontiguousarray(mel[np.newaxis], dtype=np.float32)

    def probability(self, tail: np.ndarray) -> float:
        """Blocking: P(complete) of at most 8 s of finite float32 audio."""
        out = self._session.run([self._output], {INPUT: self.features(tail)})[0]
        value = float(np.asarray(out).reshape(-1)[0])
        if math.isnan(value):  # no answer: keep listening (the silence cap still ends the turn)
            return 0.0
        if not 0.0 <= value <= 1.0:  # a user model that returns a logit
            value = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, value))))
        return value
