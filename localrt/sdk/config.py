"""Session settings (``RealtimeConfig``) and providers: where to connect and with which key.

The SDK speaks the OpenAI Realtime protocol in its GA shape, so one config drives both localrt and OpenAI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from localrt.sdk.models import SAMPLE_RATE, ToolDefinition
from localrt.sdk.tools import tool_definition


class VADMode(str, Enum):
    """``SERVER``: the server detects turns (and barge-in); ``MANUAL``: the app commits each turn."""

    SERVER = "server"
    MANUAL = "manual"


class PlaybackMode(str, Enum):
    """How the SDK learns how much reply audio the listener actually heard.

    - ``AUTO``: a chunk counts as played once it has been handed over: when every ``on_audio`` callback
      returned, or (in ``run()``) when the loop asks for the next event after the ``AudioChunk``. Right
      when the callback/loop plays the audio before returning (a blocking write to the speaker).
    - ``MANUAL``: only what the app reports with ``session.played(samples=...)`` / ``played(ms=...)``
      counts; for players that buffer (a sound-card callback reports what it consumed).
    """

    AUTO = "auto"
    MANUAL = "manual"


ToolSpec = Callable[..., Any] | ToolDefinition
OutputModality = Literal["audio", "text"]


@dataclass
class RealtimeConfig:
    """Settings of a voice session. ``None`` leaves the server's default.

    ``temperature`` is kept for the seed's shape but not sent: the GA protocol has no temperature.
    ``tools`` are plain Python functions (sync or async; their schema comes from the signature and
    docstring) or ``ToolDefinition`` objects (then answer them in ``on_tool_call``).
    """

    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    vad_mode: VADMode = VADMode.SERVER
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    temperature: float = 0.8
    max_tokens: int | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    output_modality: OutputModality = "audio"
    input_transcription: str | None = "whisper-1"
    playback: PlaybackMode = PlaybackMode.AUTO
    interrupt_response: bool = True
    max_tool_rounds: int = 4

    def __post_init__(self) -> None:
        self.vad_mode = VADMode(self.vad_mode)
        self.playback = PlaybackMode(self.playback)
        _check(0.0 <= self.vad_threshold <= 1.0, "vad_threshold must be within 0..1")
        _check(self.vad_prefix_padding_ms >= 0, "vad_prefix_padding_ms must be >= 0")
        _check(self.vad_silence_duration_ms >= 0, "vad_silence_duration_ms must be >= 0")
        _check(0.0 <= self.temperature <= 2.0, "temperature must be within 0..2")
        _check(self.max_tokens is None or 1 <= self.max_tokens <= 4096, "max_tokens must be 1..4096")
        _check(self.output_modality in ("audio", "text"), "output_modality must be 'audio' or 'text'")
        _check(self.max_tool_rounds >= 1, "max_tool_rounds must be >= 1")

    def tool_definitions(self) -> list[ToolDefinition]:
        return [t if isinstance(t, ToolDefinition) else tool_definition(t) for t in self.tools]

    def tool_functions(self) -> dict[str, Callable[..., Any]]:
        return {tool_definition(t).name: t for t in self.tools if not isinstance(t, ToolDefinition)}

    def session_update(self) -> dict[str, Any]:
        """The ``session`` of the ``session.update`` sent on connect (GA shape)."""
        audio_format = {"type": "audio/pcm", "rate": SAMPLE_RATE}
        turn: dict[str, Any] | None = None
        if self.vad_mode is VADMode.SERVER:
            turn = {
                "type": "server_vad",
                "threshold": self.vad_threshold,
                "prefix_padding_ms": self.vad_prefix_padding_ms,
                "silence_duration_ms": self.vad_silence_duration_ms,
                "create_response": True,
                "interrupt_response": self.interrupt_response,
            }
        transcription = {"model": self.input_transcription} if self.input_transcription else None
        output: dict[str, Any] = {"format": audio_format}
        if self.voice:
            output["voice"] = self.voice
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": [self.output_modality],
            "audio": {
                "input": {"format": audio_format, "transcription": transcription, "turn_detection": turn},
                "output": output,
            },
            "tools": [t.to_wire() for t in self.tool_definitions()],
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_tokens if self.max_tokens is not None else "inf",
        }
        if self.instructions is not None:
            session["instructions"] = self.instructions
        return session


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Provider:
    name: str
    url: str
    key_env: str
    key_required: bool
    default_model: str | None
    url_env: str | None = None


PROVIDERS: dict[str, Provider] = {
    "localrt": Provider(
        "localrt", "ws://127.0.0.1:8000/v1/realtime", "LOCALRT_API_KEY", False, None, "LOCALRT_URL"
    ),
    "openai": Provider("openai", "wss://api.openai.com/v1/realtime", "OPENAI_API_KEY", True, "gpt-realtime"),
}
DEFAULT_PROVIDER = "localrt"


def available_providers() -> list[str]:
    """Every provider the SDK can talk to."""
    return list(PROVIDERS)


def configured_providers(env: Mapping[str, str] | None = None) -> list[str]:
    """Providers usable now: localrt needs no key; the others need theirs in the environment."""
    env = os.environ if env is None else env
    return [p.name for p in PROVIDERS.values() if not p.key_required or env.get(p.key_env)]


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: the full ``ws(s)://`` URL and the handshake headers."""

    url: str
    headers: dict[str, str]

    def __repr__(self) -> str:  # never show the key
        shown = {k: ("***" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        return f"Endpoint(url={self.url!r}, headers={shown!r})"


def endpoint(
    provider: str | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """The URL and headers for ``provider``. ``url`` may be a base (``http://host:8000``,
    ``ws://host:8000/v1``) or the full ``.../v1/realtime``; it defaults to ``LOCALRT_URL`` (localrt) or the
    provider's URL. ``api_key`` defaults to the provider's variable."""
    from localrt.sdk.models import RealtimeConnectionError

    env = os.environ if env is None else env
    name = provider or DEFAULT_PROVIDER
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; available: {', '.join(PROVIDERS)}")
    spec = PROVIDERS[name]
    key = api_key if api_key is not None else env.get(spec.key_env) or None
    if spec.key_required and not key:
        raise RealtimeConnectionError(
            f"provider {name!r} needs an API key: set {spec.key_env} or pass api_key=",
            code="missing_api_key",
        )
    base = realtime_url(url or (env.get(spec.url_env) if spec.url_env else None) or spec.url)
    query = {"model": model or spec.default_model}
    qs = urlencode({k: v for k, v in query.items() if v})
    full = base + (("&" if "?" in base else "?") + qs if qs else "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Endpoint(full, headers)


def realtime_url(url: str) -> str:
    """``http(s)://`` becomes ``ws(s)://``; a URL without a path gets ``/v1/realtime``, one ending in
    ``/v1`` gets ``/realtime``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1/realtime"
    elif path.endswith("/v1"):
        path += "/realtime"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{parts.netloc}{path}{query}"
