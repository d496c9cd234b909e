"""The session configuration: one internal model, rendered in the client's shape (GA or beta).

- :class:`SessionConfig` is what the rest of the loop reads. It is never mutated in place: an update
  builds a new one, so a response that already started keeps the settings it started with.
- :func:`apply_update` merges a partial ``session.update`` into the current settings and validates the
  result as a whole: the current session is rendered in the client's dialect, the update is deep-merged
  into it (objects merge field by field unless their ``type`` changes; lists, scalars and ``null``
  replace), and the merged object is validated by the dialect's pydantic model. Any error drops the whole
  update; its ``param`` is the dotted path inside ``session``.

Per-response overrides (``response.create``) live in :mod:`.response_options`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from localrt.errors import InvalidRequest, MissingParameter
from localrt.realtime import formats
from localrt.realtime import wire_config as w
from localrt.realtime.events import Dialect, shown, validation_error
from localrt.realtime.formats import AudioFormat

SessionType = Literal["realtime", "transcription"]
SESSION_LIFETIME_S = 3600
# semantic_vad without a turn model (load_turn false): server VAD with a silence window per eagerness.
SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
# semantic_vad with the turn model: the longest silence before the turn ends anyway (OpenAI's caps), and
# the silence after which a transcript that sounds finished ends it even when the model was unsure.
SEMANTIC_MAX_SILENCE_MS = {"low": 8000, "medium": 4000, "auto": 4000, "high": 2000}
SEMANTIC_SETTLE_MS = {"low": 2000, "medium": 1000, "auto": 1000, "high": 500}


@dataclass(frozen=True)
class TurnDetection:
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = w.DEFAULT_SILENCE_MS
    idle_timeout_ms: int | None = None
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str = "auto"

    @property
    def silence_ms(self) -> int:
        """The silence that ends a turn by itself (semantic_vad: without a turn model)."""
        if self.type == "semantic_vad":
            return SEMANTIC_SILENCE_MS[self.eagerness]
        return self.silence_duration_ms

    def window_ms(self, turn_model: bool) -> int:
        """The silence that ends a turn by itself; ``turn_model``: semantic_vad asks one (then this is
        the eagerness' cap, and the model ends most turns long before it)."""
        if self.type == "semantic_vad" and turn_model:
            return SEMANTIC_MAX_SILENCE_MS[self.eagerness]
        return self.silence_ms


@dataclass(frozen=True)
class Transcription:
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # newer GA fields, echoed back


@dataclass(frozen=True)
class SessionConfig:
    type: SessionType = "realtime"
    model: str = "gpt-realtime"
    instructions: str = w.DEFAULT_INSTRUCTIONS
    audio_output: bool = True  # output_modalities ["audio"] (audio + transcript) vs ["text"]
    input_format: AudioFormat = formats.PCM16
    output_format: AudioFormat = formats.PCM16
    transcription: Transcription | None = None
    noise_reduction: dict[str, Any] | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    voice: str | dict[str, str] = "alloy"
    speed: float = 1.0
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | Literal["inf"] = "inf"
    temperature: float = 0.8
    extras: dict[str, Any] = field(default_factory=dict)  # tracing, truncation, prompt, include, ...

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice["id"]


def initial(session_type: SessionType, model: str) -> SessionConfig:
    return SessionConfig(type=session_type, model=model)


# --- rendering ----------------------------------------------------------------------------------------------
def _turn_detection_wire(td: TurnDetection | None) -> dict[str, Any] | None:
    if td is None:
        return None
    if td.type == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": td.eagerness,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
    return {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "idle_timeout_ms": td.idle_timeout_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }


def _transcription_wire(tr: Transcription | None) -> dict[str, Any] | None:
    if tr is None:
        return None
    return {"model": tr.model, "language": tr.language, "prompt": tr.prompt, **tr.extra}


def render(
    cfg: SessionConfig, dialect: Dialect, *, session_id: str | None = None, expires_at: int | None = None
) -> dict[str, Any]:
    """The session object as the client sees it. Without ``session_id``: only the updatable fields."""
    body = _render_ga(cfg) if dialect == "ga" else _render_beta(cfg)
    if session_id is None:
        return body
    head: dict[str, Any] = {}
    if dialect == "ga":
        head["type"] = body.pop("type")
    obj = "realtime.transcription_session" if cfg.type == "transcription" else "realtime.session"
    head.update({"object": obj, "id": session_id})
    if cfg.type == "realtime":
        head["model"] = body.pop("model")
    else:
        body.pop("model", None)
    head["expires_at"] = expires_at if expires_at is not None else int(time.time()) + SESSION_LIFETIME_S
    if dialect == "beta":
        head["client_secret"] = None
    return {**head, **body}


def _render_ga(cfg: SessionConfig) -> dict[str, Any]:
    audio_input = {
        "format": cfg.input_format.ga(),
        "transcription": _transcription_wire(cfg.transcription),
        "noise_reduction": cfg.noise_reduction,
        "turn_detection": _turn_detection_wire(cfg.turn_detection),
    }
    if cfg.type == "transcription":
        return {
            "type": "transcription",
            "model": cfg.model,
            "audio": {"input": audio_input},
            "include": cfg.extras.get("include"),
        }
    return {
        "type": "realtime",
        "model": cfg.model,
        "output_modalities": ["audio"] if cfg.audio_output else ["text"],
        "instructions": cfg.instructions,
        "tools": [dict(t) for t in cfg.tools],
        "tool_choice": cfg.tool_choice,
        "max_output_tokens": cfg.max_output_tokens,
        "tracing": cfg.extras.get("tracing"),
        "truncation": cfg.extras.get("truncation", "auto"),
        "prompt": cfg.extras.get("prompt"),
        "include": cfg.extras.get("include"),
        "audio": {
            "input": audio_input,
            "output": {"format": cfg.output_format.ga(), "voice": cfg.voice, "speed": cfg.speed},
        },
    }


def _render_beta(cfg: SessionConfig) -> dict[str, Any]:
    common = {
        "input_audio_format": cfg.input_format.name,
        "input_audio_transcription": _transcription_wire(cfg.transcription),
        "input_audio_noise_reduction": cfg.noise_reduction,
        "turn_detection": _turn_detection_wire(cfg.turn_detection),
        "include": cfg.extras.get("include"),
    }
    if cfg.type == "transcription":
        return {"model": cfg.model, **common}
    return {
        "model": cfg.model,
        "modalities": ["text", "audio"] if cfg.audio_output else ["text"],
        "instructions": cfg.instructions,
        "voice": cfg.voice_name,  # beta types take a name only, not GA's {"id": ...}
        "speed": cfg.speed,
        "output_audio_format": cfg.output_format.name,
        **common,
        "tools": [dict(t) for t in cfg.tools],
        "tool_choice": cfg.tool_choice,
        "temperature": cfg.temperature,
        "max_response_output_tokens": cfg.max_output_tokens,
        "tracing": cfg.extras.get("tracing"),
        "truncation": cfg.extras.get("truncation"),
        "prompt": cfg.extras.get("prompt"),
    }


# --- updates ------------------------------------------------------------------------------------------------
def _merge(base: Any, update: Any) -> Any:
    if (
        isinstance(base, dict)
        and isinstance(update, dict)
        and update.get("type", base.get("type")) == base.get("type")
    ):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return update


def _plain(value: Any) -> Any:
    """A wire value as plain JSON data (a string literal stays as it is)."""
    return value.model_dump() if isinstance(value, BaseModel) else value


def _dump(model: BaseModel | None) -> Any:
    return None if model is None else model.model_dump(exclude_none=False)


def apply_update(
    cfg: SessionConfig, update: dict[str, Any], dialect: Dialect, *, transcription_event: bool = False
) -> SessionConfig:
    """A new config with ``update`` merged in; raises an APIError (param ``session.…``) if invalid.

    ``transcription_event``: the update came as beta ``transcription_session.update``.
    """
    if dialect == "ga":
        if "type" not in update:
            raise MissingParameter("Missing required parameter: 'session.type'.", param="session.type")
        if update["type"] not in ("realtime", "transcription"):
            raise InvalidRequest(
                f"Invalid value: {shown(update['type'])}. Supported values are: 'realtime' and 'transcription'.",
                param="session.type",
            )
        if update["type"] != cfg.type:
            raise InvalidRequest(
                f"Cannot change the session type from '{cfg.type}' to '{update['type']}'.",
                param="session.type",
            )
    elif transcription_event != (cfg.type == "transcription"):
        expected = "transcription_session.update" if cfg.type == "transcription" else "session.update"
        raise InvalidRequest(f"This is a {cfg.type} session: configure it with '{expected}'.", param="type")
    merged = _merge(render(cfg, dialect), update)
    model_cls: type[BaseModel]
    if dialect == "ga":
        model_cls = w.GASession if cfg.type == "realtime" else w.GATranscriptionSession
    else:
        model_cls = w.BetaSession if cfg.type == "realtime" else w.BetaTranscriptionSession
    try:
        parsed = model_cls.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(exc, merged, "session") from None
    return _from_wire(cfg, parsed)


def _turn_detection(wire: w.ServerVadWire | w.SemanticVadWire | None) -> TurnDetection | None:
    if wire is None:
        return None
    if isinstance(wire, w.SemanticVadWire):
        return TurnDetection(
            type="semantic_vad",
            eagerness=wire.eagerness,
            create_response=wire.create_response,
            interrupt_response=wire.interrupt_response,
        )
    return TurnDetection(
        threshold=wire.threshold,
        prefix_padding_ms=wire.prefix_padding_ms,
        silence_duration_ms=wire.silence_duration_ms,
        idle_timeout_ms=wire.idle_timeout_ms,
        create_response=wire.create_response,
        interrupt_response=wire.interrupt_response,
    )


def _transcription(wire: w.TranscriptionWire | None) -> Transcription | None:
    if wire is None:
        return None
    extra = {
        k: v for k, v in wire.model_dump(include={"languages", "keywords", "delay"}).items() if v is not None
    }
    return Transcription(model=wire.model, language=wire.language, prompt=wire.prompt, extra=extra)


def ga_format(wire: Any) -> AudioFormat:
    return formats.BY_GA_TYPE[wire.type]


def voice_value(wire: str | w.VoiceId) -> str | dict[str, str]:
    return wire if isinstance(wire, str) else {"id": wire.id}


def tools_tuple(wire: list[w.FunctionToolWire]) -> tuple[dict[str, Any], ...]:
    return tuple(t.model_dump() for t in wire)


def tool_choice_dict(wire: str | w.ToolChoiceFunction) -> str | dict[str, Any]:
    return wire if isinstance(wire, str) else wire.model_dump()


def _from_wire(cfg: SessionConfig, p: BaseModel) -> SessionConfig:
    extras = dict(cfg.extras)
    if isinstance(p, w.GASession):
        extras.update(
            tracing=_plain(p.tracing),
            truncation=_plain(p.truncation),
            prompt=_plain(p.prompt),
            include=p.include,
        )
        a_in, a_out = p.audio.input, p.audio.output
        return replace(
            cfg,
            instructions=p.instructions,
            audio_output="audio" in p.output_modalities,
            input_format=ga_format(a_in.format),
            output_format=ga_format(a_out.format),
            transcription=_transcription(a_in.transcription),
            noise_reduction=_dump(a_in.noise_reduction),
            turn_detection=_turn_detection(a_in.turn_detection),
            voice=voice_value(a_out.voice),
            speed=a_out.speed,
            tools=tools_tuple(p.tools),
            tool_choice=tool_choice_dict(p.tool_choice),
            max_output_tokens=p.max_output_tokens,
            extras=extras,
        )
    if isinstance(p, w.GATranscriptionSession):
        extras.update(include=p.include)
        t_in = p.audio.input
        return replace(
            cfg,
            input_format=ga_format(t_in.format),
            transcription=_transcription(t_in.transcription),
            noise_reduction=_dump(t_in.noise_reduction),
            turn_detection=_turn_detection(t_in.turn_detection),
            extras=extras,
        )
    if isinstance(p, w.BetaSession):
        extras.update(
            tracing=_plain(p.tracing),
            truncation=_plain(p.truncation),
            prompt=_plain(p.prompt),
            include=p.include,
        )
        return replace(
            cfg,
            instructions=p.instructions,
            audio_output="audio" in p.modalities,
            input_format=formats.BY_NAME[p.input_audio_format],
            output_format=formats.BY_NAME[p.output_audio_format],
            transcription=_transcription(p.input_audio_transcription),
            noise_reduction=_dump(p.input_audio_noise_reduction),
            turn_detection=_turn_detection(p.turn_detection),
            voice=voice_value(p.voice),
            speed=p.speed,
            tools=tools_tuple(p.tools),
            tool_choice=tool_choice_dict(p.tool_choice),
            temperature=p.temperature,
            max_output_tokens=p.max_response_output_tokens,
            extras=extras,
        )
    if not isinstance(p, w.BetaTranscriptionSession):
        raise TypeError(f"unexpected session model {type(p).__name__}")
    extras.update(include=p.include)
    return replace(
        cfg,
        input_format=formats.BY_NAME[p.input_audio_format],
        transcription=_transcription(p.input_audio_transcription),
        noise_reduction=_dump(p.input_audio_noise_reduction),
        turn_detection=_turn_detection(p.turn_detection),
        extras=extras,
    )
