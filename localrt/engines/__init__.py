"""Shared engines: created once per server, used by every request and realtime session.

Callers see the engines through the protocols of :mod:`localrt.engines.interfaces` only. Which class
implements each is a setting (``llm_engine``, ``stt_engine``, ``tts_engine``, ``vad_engine``,
``turn_engine``) looked up in :data:`REGISTRY`: another implementation is one class plus one entry here. ``load_engines`` builds them
(blocking: the app's lifespan runs it in a thread so the event loop stays free). Tests may build an
:class:`Engines` with fakes and pass it to ``create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localrt import catalog as catalog_mod
from localrt.engines.interfaces import (
    ChatModels,
    SpeechToText,
    TextToSpeech,
    TurnCompletion,
    VoiceActivity,
)
from localrt.engines.scheduler import SchedulerStats
from localrt.settings import Settings

logger = logging.getLogger(__name__)

Loader = Callable[[Settings, catalog_mod.Catalog], Any]


def _llama_cpp(settings: Settings, cat: catalog_mod.Catalog) -> ChatModels:
    from localrt.engines.llm_pool import LLMPool

    pool = LLMPool(settings, cat)
    pool.load_default()
    return pool


def _faster_whisper(settings: Settings, cat: catalog_mod.Catalog) -> SpeechToText:
    from localrt.engines.stt import WhisperEngine

    return WhisperEngine.from_settings(settings, cat)


def _piper(settings: Settings, cat: catalog_mod.Catalog) -> TextToSpeech:
    from localrt.engines.tts import PiperEngine

    return PiperEngine.from_settings(settings, cat)


def _silero(settings: Settings, cat: catalog_mod.Catalog) -> VoiceActivity:
    from localrt.engines.vad import SileroVAD

    return SileroVAD.from_settings(settings, cat)


def _smart_turn(settings: Settings, cat: catalog_mod.Catalog) -> TurnCompletion:
    from localrt.engines.smart_turn import SmartTurn

    return SmartTurn.from_settings(settings, cat)


def _openai_llm(settings: Settings, cat: catalog_mod.Catalog) -> ChatModels:
    from localrt.engines.remote_llm import RemoteChatModels

    return RemoteChatModels.from_settings(settings)


def _openai_stt(settings: Settings, cat: catalog_mod.Catalog) -> SpeechToText:
    from localrt.engines.remote_stt import RemoteSpeechToText

    return RemoteSpeechToText.from_settings(settings)


def _openai_tts(settings: Settings, cat: catalog_mod.Catalog) -> TextToSpeech:
    from localrt.engines.remote_tts import RemoteTextToSpeech

    return RemoteTextToSpeech.from_settings(settings)


# kind -> implementation name -> loader (blocking; runs at start-up in a thread).
REGISTRY: dict[str, dict[str, Loader]] = {
    "llm": {"llama_cpp": _llama_cpp, "openai": _openai_llm},
    "stt": {"faster_whisper": _faster_whisper, "openai": _openai_stt},
    "tts": {"piper": _piper, "openai": _openai_tts},
    "vad": {"silero": _silero},
    "turn": {"smart_turn": _smart_turn},
}


def _loader(kind: str, name: str) -> Loader:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY[kind]))
        raise ValueError(f"unknown {kind}_engine {name!r} (known: {known})") from None


def engine_name(settings: Settings, kind: str) -> str:
    """The implementation of ``kind`` to load: ``<kind>_engine``, except that a ``<kind>_base_url`` with
    the engine left unset (not given by flag, environment or .env) picks the remote (``openai``) one."""
    name: str = getattr(settings, f"{kind}_engine")
    chosen = f"{kind}_engine" in settings.model_fields_set
    if getattr(settings, f"{kind}_base_url", None) and not chosen and "openai" in REGISTRY[kind]:
        return "openai"
    return name


@dataclass
class Engines:
    llm: ChatModels
    stt: SpeechToText | None = None
    tts: TextToSpeech | None = None
    vad: VoiceActivity | None = None
    turn: TurnCompletion | None = None  # semantic_vad's end-of-turn model (Smart Turn)

    def stats(self) -> list[SchedulerStats]:
        """Every engine's scheduler, for /health and /metrics."""
        out: list[SchedulerStats] = []
        for engine in (self.llm, self.stt, self.tts, self.vad, self.turn):
            if engine is not None:
                out.extend(engine.stats())
        return out

    def close(self) -> None:
        for engine in (self.turn, self.vad, self.tts, self.stt, self.llm):
            if engine is not None:
                try:
                    engine.close()
                except Exception:  # closing must go on for the others
                    logger.exception("error closing %r", engine)


def load_engines(settings: Settings, cat: catalog_mod.Catalog | None = None) -> Engines:
    """Load every engine the settings ask for (blocking)."""
    cat = cat or catalog_mod.scan(settings.models_dir)
    loaders = {
        "llm": _loader("llm", engine_name(settings, "llm")),
        "stt": _loader("stt", engine_name(settings, "stt")),
        "tts": _loader("tts", engine_name(settings, "tts")),
        "vad": _loader("vad", settings.vad_engine),
        "turn": _loader("turn", settings.turn_engine),
    }
    engines = Engines(llm=loaders["llm"](settings, cat))
    try:
        if settings.load_stt:
            engines.stt = loaders["stt"](settings, cat)
        if settings.load_tts:
            engines.tts = loaders["tts"](settings, cat)
        if settings.load_vad:
            engines.vad = loaders["vad"](settings, cat)
        if settings.load_vad and settings.load_turn:  # no VAD, no pauses for the turn model to judge
            engines.turn = loaders["turn"](settings, cat)
    except BaseException:
        engines.close()
        raise
    return engines
