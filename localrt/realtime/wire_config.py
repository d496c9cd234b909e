"""Pydantic models of the session and response-override objects, as each dialect sends them.

Every model forbids unknown fields, so a typo becomes ``unknown_parameter`` naming the field. Defaults
are the values a new session starts with. :mod:`.config` merges a partial update into the rendered
current session and validates the result with these models; it never sees unvalidated input.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from localrt.engines.grammar import UnsafeSchema, check_schema
from localrt.realtime.events import InputItemParam

# Short and plain: the embedded 135M model follows these best (longer prompts derail it).
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."
DEFAULT_SILENCE_MS = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- shared pieces ------------------------------------------------------------------------------------------
class FormatPCM(_Strict):
    type: Literal["audio/pcm"]
    rate: int = Field(default=24000, ge=24000, le=24000)


class FormatPCMU(_Strict):
    type: Literal["audio/pcmu"]


class FormatPCMA(_Strict):
    type: Literal["audio/pcma"]


GAFormat = Annotated[FormatPCM | FormatPCMU | FormatPCMA, Field(discriminator="type")]
BetaFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]


class TranscriptionWire(_Strict):
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    languages: list[str] | None = None
    keywords: list[str] | None = None
    delay: Any = None


class NoiseReductionWire(_Strict):
    type: Literal["near_field", "far_field"]
    strength: float | None = None


class ServerVadWire(_Strict):
    type: Literal["server_vad"]
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=10_000)
    silence_duration_ms: int = Field(default=DEFAULT_SILENCE_MS, ge=0, le=10_000)
    idle_timeout_ms: int | None = Field(default=None, ge=0)
    create_response: bool = True
    interrupt_response: bool = True


class SemanticVadWire(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


TurnDetectionWire = Annotated[ServerVadWire | SemanticVadWire, Field(discriminator="type")]


# Accepted and echoed in the session, not acted on: typed as OpenAI types them, so the session echoed
# back is one OpenAI's own types accept (a strict client rejects anything else), never arbitrary JSON.
class TracingWire(_Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


class TokenLimitsWire(_Strict):
    post_instructions: int | None = Field(default=None, ge=0)


class RetentionRatioWire(_Strict):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0.0, le=1.0)
    token_limits: TokenLimitsWire | None = None


class PromptWire(_Strict):
    id: str
    version: str | None = None
    variables: dict[str, str] | None = None


class ReasoningWire(_Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


Tracing = Literal["auto"] | TracingWire | None
Truncation = Literal["auto", "disabled"] | RetentionRatioWire
Include = list[Literal["item.input_audio_transcription.logprobs"]]


class VoiceId(_Strict):
    id: str


Voice = str | VoiceId


class FunctionToolWire(_Strict):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _grammar_safe(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Refused here, at session.update / response.create, if no safe grammar can be made of it
        (:mod:`localrt.engines.grammar`), rather than when a response needs it."""
        if value is not None:
            try:
                check_schema(value)
            except UnsafeSchema as exc:
                raise PydanticCustomError("value_error", str(exc)) from None
        return value


Tools = Annotated[list[FunctionToolWire], Field(max_length=128)]  # OpenAI's limit


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str


ToolChoice = Literal["auto", "none", "required"] | ToolChoiceFunction
MaxTokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]
Modalities = list[Literal["text", "audio"]]


class _ReadOnly(_Strict):
    """Fields the server sets; a client echoing a whole session back may include them."""

    object: str | None = None
    id: str | None = None
    expires_at: int | None = None
    client_secret: Any = None


# --- GA -----------------------------------------------------------------------------------------------------
class GAInput(_Strict):
    format: GAFormat = Field(default_factory=lambda: FormatPCM(type="audio/pcm"))
    transcription: TranscriptionWire | None = None
    noise_reduction: NoiseReductionWire | None = None
    turn_detection: TurnDetectionWire | None = Field(default_factory=lambda: ServerVadWire(type="server_vad"))


class GAOutput(_Strict):
    format: GAFormat = Field(default_factory=lambda: FormatPCM(type="audio/pcm"))
    voice: Voice = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=1.5)


class GAAudio(_Strict):
    input: GAInput = Field(default_factory=GAInput)
    output: GAOutput = Field(default_factory=GAOutput)


class GASession(_ReadOnly):
    type: Literal["realtime"]
    model: str | None = None
    output_modalities: Modalities = Field(
        default_factory=lambda: list[Literal["text", "audio"]](["audio"]), min_length=1
    )
    instructions: str = DEFAULT_INSTRUCTIONS
    tools: Tools = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    max_output_tokens: MaxTokens = "inf"
    tracing: Tracing = None
    truncation: Truncation = "auto"
    prompt: PromptWire | None = None
    include: Include | None = None
    audio: GAAudio = Field(default_factory=GAAudio)
    reasoning: ReasoningWire | None = None
    parallel_tool_calls: bool | None = None


class GATranscriptionInput(_Strict):
    format: GAFormat = Field(default_factory=lambda: FormatPCM(type="audio/pcm"))
    transcription: TranscriptionWire | None = None
    noise_reduction: NoiseReductionWire | None = None
    turn_detection: TurnDetectionWire | None = Field(default_factory=lambda: ServerVadWire(type="server_vad"))


class GATranscriptionAudio(_Strict):
    input: GATranscriptionInput = Field(default_factory=GATranscriptionInput)


class GATranscriptionSession(_ReadOnly):
    type: Literal["transcription"]
    model: str | None = None
    audio: GATranscriptionAudio = Field(default_factory=GATranscriptionAudio)
    include: Include | None = None


class GAResponseOutput(_Strict):
    format: GAFormat | None = None
    voice: Voice | None = None


class GAResponseAudio(_Strict):
    output: GAResponseOutput | None = None


class GAResponseParams(_Strict):
    output_modalities: Modalities | None = Field(default=None, min_length=1)
    instructions: str | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    audio: GAResponseAudio | None = None
    max_output_tokens: MaxTokens | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    conversation: Literal["auto", "none"] | None = None
    input: list[InputItemParam] | None = None
    prompt: Any = None
    parallel_tool_calls: bool | None = None
    reasoning: Any = None


# --- beta ---------------------------------------------------------------------------------------------------
class BetaSession(_ReadOnly):
    model: str | None = None
    modalities: Modalities = Field(
        default_factory=lambda: list[Literal["text", "audio"]](["text", "audio"]), min_length=1
    )
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: Voice = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=1.5)
    input_audio_format: BetaFormat = "pcm16"
    output_audio_format: BetaFormat = "pcm16"
    input_audio_transcription: TranscriptionWire | None = None
    input_audio_noise_reduction: NoiseReductionWire | None = None
    turn_detection: TurnDetectionWire | None = Field(default_factory=lambda: ServerVadWire(type="server_vad"))
    tools: Tools = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    temperature: float = Field(default=0.8, ge=0.6, le=1.2)
    max_response_output_tokens: MaxTokens = "inf"
    tracing: Tracing = None
    truncation: Truncation | None = None
    prompt: PromptWire | None = None
    include: Include | None = None


class BetaTranscriptionSession(_ReadOnly):
    model: str | None = None
    modalities: Modalities | None = None
    input_audio_format: BetaFormat = "pcm16"
    input_audio_transcription: TranscriptionWire | None = None
    input_audio_noise_reduction: NoiseReductionWire | None = None
    turn_detection: TurnDetectionWire | None = Field(default_factory=lambda: ServerVadWire(type="server_vad"))
    include: Include | None = None


class BetaResponseParams(_Strict):
    modalities: Modalities | None = Field(default=None, min_length=1)
    instructions: str | None = None
    voice: Voice | None = None
    output_audio_format: BetaFormat | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    temperature: float | None = Field(default=None, ge=0.6, le=1.2)
    max_response_output_tokens: MaxTokens | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    conversation: Literal["auto", "none"] | None = None
    input: list[InputItemParam] | None = None
