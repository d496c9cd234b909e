"""Shared engines: created once per server, used by every request and realtime session.

``load_engines`` builds them from settings (blocking: the app's lifespan runs it in a thread so the
event loop stays free). Tests may build an :class:`Engines` with fakes and pass it to ``create_app``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localrt import catalog as catalog_mod
from localrt.settings import Settings

if TYPE_CHECKING:
    from localrt.engines.llm_pool import LLMPool

logger = logging.getLogger(__name__)


@dataclass
class Engines:
    llm: LLMPool
    stt: Any = None  # localrt.engines.stt.WhisperEngine
    tts: Any = None  # localrt.engines.tts.PiperEngine
    vad: Any = None  # localrt.engines.vad.SileroVAD

    def close(self) -> None:
        for engine in (self.vad, self.tts, self.stt, self.llm):
            if engine is not None:
                try:
                    engine.close()
                except Exception:  # closing must go on for the others
                    logger.exception("error closing %r", engine)


def load_engines(settings: Settings, cat: catalog_mod.Catalog | None = None) -> Engines:
    """Load every engine the settings ask for (blocking)."""
    from localrt.engines.llm_pool import LLMPool

    cat = cat or catalog_mod.scan(settings.models_dir)
    pool = LLMPool(settings, cat)
    pool.load_default()
    engines = Engines(llm=pool)
    try:
        if settings.load_stt:
            from localrt.engines.stt import WhisperEngine

            engines.stt = WhisperEngine.from_settings(settings, cat)
        if settings.load_tts:
            from localrt.engines.tts import PiperEngine

            engines.tts = PiperEngine.from_settings(settings, cat)
        if settings.load_vad:
            from localrt.engines.vad import SileroVAD

            engines.vad = SileroVAD.from_settings(settings, cat)
    except BaseException:
        engines.close()
        raise
    return engines
