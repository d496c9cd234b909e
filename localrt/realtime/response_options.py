"""The settings of one response: the session's, overlaid with a ``response.create`` override.

The override is validated by the dialect's pydantic model (``response.…`` params in errors) and only the
fields it sets replace the session's, for this response only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from localrt.engines.interfaces import ChatJob, ChatModel
from localrt.engines.scheduler import Priority
from localrt.engines.types import SamplingParams
from localrt.realtime import formats
from localrt.realtime import wire_config as w
from localrt.realtime.config import SessionConfig, ga_format, tool_choice_dict, tools_tuple, voice_value
from localrt.realtime.events import Dialect, validation_error
from localrt.realtime.formats import AudioFormat


@dataclass(frozen=True)
class ChatCall:
    """One response's chat request, as the engine gets it. Two are the same request when they are equal:
    a speculative reply's held job is taken over only by a response that would ask exactly this."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    params: SamplingParams
    cache_key: str | None

    def open(self, llm: ChatModel, priority: Priority) -> ChatJob:
        """The chat job. When the history no longer fits the context (truncation "auto"), the engine
        drops its oldest whole turns, in one cut and in its worker thread, never on the event loop."""
        return llm.chat(
            self.messages,
            tools=self.tools,
            tool_choice=self.tool_choice,
            params=self.params,
            truncate_history=True,
            priority=priority,
            cache_key=self.cache_key,
        )


@dataclass(frozen=True)
class ResponseOptions:
    """The settings of one response: the session's, overlaid with the ``response.create`` overrides."""

    audio_output: bool
    instructions: str
    tools: tuple[dict[str, Any], ...]
    tool_choice: str | dict[str, Any]
    output_format: AudioFormat
    voice: str | dict[str, str]
    speed: float
    max_output_tokens: int | Literal["inf"]
    temperature: float
    metadata: dict[str, str] | None = None
    conversation: Literal["auto", "none"] = "auto"
    input: list[Any] | None = None  # parsed items / item references, or None = the conversation

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice["id"]

    @property
    def max_tokens(self) -> int | None:
        return None if self.max_output_tokens == "inf" else int(self.max_output_tokens)

    def sampling(self) -> SamplingParams:
        """The LLM's sampling settings for this response (a speculative reply must ask for the same)."""
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature)

    def chat_call(self, messages: list[dict[str, Any]], cache_key: str | None) -> ChatCall:
        """This response's chat request over ``messages``."""
        return ChatCall(messages, self.chat_tools(), self.chat_tool_choice(), self.sampling(), cache_key)

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """The tools in the chat-completions format the LLM engine takes."""
        if not self.tools:
            return None
        return [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description") or "",
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
            for t in self.tools
        ]

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        if not self.tools:
            return None
        if isinstance(self.tool_choice, dict):
            return {"type": "function", "function": {"name": self.tool_choice["name"]}}
        return self.tool_choice


def response_options(cfg: SessionConfig, raw: dict[str, Any] | None, dialect: Dialect) -> ResponseOptions:
    opts = ResponseOptions(
        audio_output=cfg.audio_output,
        instructions=cfg.instructions,
        tools=cfg.tools,
        tool_choice=cfg.tool_choice,
        output_format=cfg.output_format,
        voice=cfg.voice,
        speed=cfg.speed,
        max_output_tokens=cfg.max_output_tokens,
        temperature=cfg.temperature,
    )
    if not raw:
        return opts
    model_cls: type[BaseModel] = w.GAResponseParams if dialect == "ga" else w.BetaResponseParams
    try:
        p: Any = model_cls.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, raw, "response") from None
    changes: dict[str, Any] = {}
    if p.instructions is not None:
        changes["instructions"] = p.instructions
    if p.tools is not None:
        changes["tools"] = tools_tuple(p.tools)
    if p.tool_choice is not None:
        changes["tool_choice"] = tool_choice_dict(p.tool_choice)
    if p.metadata is not None:
        changes["metadata"] = dict(p.metadata)
    if p.conversation is not None:
        changes["conversation"] = p.conversation
    if p.input is not None:
        changes["input"] = list(p.input)
    if isinstance(p, w.GAResponseParams):
        if p.output_modalities is not None:
            changes["audio_output"] = "audio" in p.output_modalities
        if p.audio is not None and p.audio.output is not None:
            if p.audio.output.format is not None:
                changes["output_format"] = ga_format(p.audio.output.format)
            if p.audio.output.voice is not None:
                changes["voice"] = voice_value(p.audio.output.voice)
        if p.max_output_tokens is not None:
            changes["max_output_tokens"] = p.max_output_tokens
    else:
        if p.modalities is not None:
            changes["audio_output"] = "audio" in p.modalities
        if p.output_audio_format is not None:
            changes["output_format"] = formats.BY_NAME[p.output_audio_format]
        if p.voice is not None:
            changes["voice"] = voice_value(p.voice)
        if p.temperature is not None:
            changes["temperature"] = p.temperature
        if p.max_response_output_tokens is not None:
            changes["max_output_tokens"] = p.max_response_output_tokens
    return replace(opts, **changes)
