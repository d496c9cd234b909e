"""``/v1/audio/*``: transcriptions and translations (Whisper), speech (Piper) and the voice list.

Uploads arrive as multipart forms (as the OpenAI SDK sends them), read and decoded within the limits
of :mod:`.uploads`. Decoding and encoding run in worker threads, the models in their engines'
schedulers; every wait is cancellable, and a client that leaves stops its decoding and its Whisper
job (within one native call, see :mod:`localrt.engines.stt_bounds`). Speech is always streamed:
``stream_format=audio`` (the default, as with OpenAI) sends encoded bytes as sentences are synthesized,
``sse`` wraps the same bytes in ``speech.audio.delta`` events.

Requests queue as ``Priority.HTTP`` (transcriptions of more than ``bulk_audio_seconds`` of audio as
``Priority.BULK``), behind realtime voice turns. A full engine queue is a 429 with ``Retry-After``:
every job is submitted before a response starts, streamed ones included, so the refusal is a status,
not an error frame.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from localrt.api import uploads
from localrt.api.common import DrainingStream, engines_of, parse_body, sse, unless_disconnected
from localrt.audio import codecs
from localrt.engines.interfaces import ItemStream, SpeechToText, TextToSpeech
from localrt.engines.scheduler import Priority
from localrt.engines.stt import language_name
from localrt.engines.tts import OPENAI_VOICES
from localrt.engines.types import AudioChunk, Segment, Task, Transcription
from localrt.errors import (
    APIError,
    EngineUnavailable,
    InvalidRequest,
    MissingParameter,
    ModelNotFound,
)
from localrt.settings import Settings

MAX_INPUT_CHARS = 4096
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")


# --- transcriptions and translations ---------------------------------------------------------------


def _stt(request: Request) -> SpeechToText:
    engine = engines_of(request).stt
    if engine is None:
        raise EngineUnavailable("Speech to text is not loaded on this server (load_stt is off).")
    return engine


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequest(f"'{name}' must be a form field, not a file.", param=name)


def _float_field(form: FormData, name: str, default: float, low: float, high: float) -> float:
    raw = _field(form, name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number, got '{raw}'.", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}.", param=name)
    return value


def _check_model(form: FormData, engine: SpeechToText) -> None:
    model = _field(form, "model")
    if not model:
        raise MissingParameter("Missing required parameter: 'model'.", param="model")
    if model not in engine.model_ids():
        raise ModelNotFound(model)


def _granularities(form: FormData) -> set[str]:
    values = [
        v for key in ("timestamp_granularities[]", "timestamp_granularities") for v in form.getlist(key)
    ]
    for value in values:
        if value not in GRANULARITIES:
            raise InvalidRequest(
                f"Invalid timestamp granularity '{value}'. Supported: {', '.join(GRANULARITIES)}.",
                param="timestamp_granularities",
            )
    return {str(v) for v in values} or {"segment"}


async def _speech_to_text(request: Request, task: Task) -> Response:
    engine = _stt(request)
    settings = _settings(request)
    form = await uploads.read_form(request, settings.max_upload_bytes)
    try:
        _check_model(form, engine)
        response_format = _field(form, "response_format") or "json"
        if response_format not in TRANSCRIPT_FORMATS:
            raise InvalidRequest(
                f"Unsupported response_format '{response_format}'. Supported: "
                f"{', '.join(TRANSCRIPT_FORMATS)}.",
                param="response_format",
            )
        options: dict[str, Any] = {
            "language": (_field(form, "language") or None) if task == "transcribe" else None,
            "prompt": _field(form, "prompt") or None,
            "temperature": _float_field(form, "temperature", 0.0, 0.0, 1.0),
            "task": task,
        }
        granularities = _granularities(form) if response_format == "verbose_json" else set()
        options["word_timestamps"] = "word" in granularities
        stream = task == "transcribe" and (_field(form, "stream") or "false").lower() in ("true", "1")
        data = await uploads.read_file(form, settings.max_upload_bytes)
    finally:
        await form.close()
    decode = functools.partial(uploads.decode, data, engine.sample_rate, settings.max_audio_seconds)
    del data  # held by `decode` until decoded, not while Whisper runs
    audio = await unless_disconnected(request, decode)
    del decode
    long = len(audio) > settings.bulk_audio_seconds * engine.sample_rate
    options["priority"] = Priority.BULK if long else Priority.HTTP
    if stream:
        # Submitted here, so invalid options (400) and a full queue (429) are answered as a status
        # before the event stream starts.
        return sse(_transcript_events(engine.stream(audio, **options)), done=False)
    result = await unless_disconnected(request, lambda: engine.transcribe(audio, **options))
    return _render(result, response_format, task, granularities)


async def transcriptions(request: Request) -> Response:
    return await _speech_to_text(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _speech_to_text(request, "translate")


async def _transcript_events(segments: ItemStream[Segment]) -> AsyncIterator[dict[str, Any]]:
    """``transcript.text.delta`` per segment, then ``transcript.text.done`` with the deltas joined."""
    deltas: list[str] = []
    try:
        async with segments:
            async for segment in segments:
                delta = segment.text.rstrip()
                delta = delta if deltas else delta.lstrip()
                if delta:
                    deltas.append(delta)
                    yield {"type": "transcript.text.delta", "delta": delta}
    except APIError as exc:
        yield {"type": "error", "error": exc.to_dict()}
        return
    yield {"type": "transcript.text.done", "text": "".join(deltas)}


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _subtitles(segments: list[Segment], vtt: bool) -> str:
    blocks = []
    for i, seg in enumerate(segments, start=1):
        sep = "." if vtt else ","
        times = f"{_timestamp(seg.start, sep)} --> {_timestamp(seg.end, sep)}"
        blocks.append(f"{times}\n{seg.text.strip()}\n" if vtt else f"{i}\n{times}\n{seg.text.strip()}\n")
    body = "\n".join(blocks)
    return f"WEBVTT\n\n{body}" if vtt else body


def _segment_json(seg: Segment) -> dict[str, Any]:
    return {
        "id": seg.id,
        "seek": seg.seek,
        "start": seg.start,
        "end": seg.end,
        "text": seg.text,
        "tokens": seg.tokens,
        "temperature": seg.temperature,
        "avg_logprob": seg.avg_logprob,
        "compression_ratio": seg.compression_ratio,
        "no_speech_prob": seg.no_speech_prob,
    }


def _render(result: Transcription, fmt: str, task: Task, granularities: set[str]) -> Response:
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(_subtitles(result.segments, fmt == "vtt"))
    if fmt == "json":
        return JSONResponse(
            {"text": result.text, "usage": usage} if task == "transcribe" else {"text": result.text}
        )
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(result.language),
        "duration": result.duration,
        "text": result.text,
    }
    if "segment" in granularities:
        body["segments"] = [_segment_json(s) for s in result.segments]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments
            for w in s.words or []
        ]
    if task == "transcribe":
        body["usage"] = usage
    return JSONResponse(body)


# --- speech ----------------------------------------------------------------------------------------


class VoiceRef(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str = Field(max_length=MAX_INPUT_CHARS)
    voice: str | VoiceRef | None = None
    instructions: str | None = None  # accepted; Piper voices cannot be steered by text
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"


def _tts(request: Request) -> TextToSpeech:
    engine = engines_of(request).tts
    if engine is None:
        raise EngineUnavailable("Text to speech is not loaded on this server (load_tts is off).")
    return engine


async def speech(request: Request) -> Response:
    engine = _tts(request)
    req = await parse_body(request, SpeechRequest)
    voice_ids = {v.id for v in engine.voices()}
    if req.model not in engine.model_ids():
        raise ModelNotFound(req.model)
    if not req.input.strip():
        raise InvalidRequest("'input' must contain text to speak.", param="input")
    fmt = codecs.check_format(req.response_format)
    voice = req.voice.id if isinstance(req.voice, VoiceRef) else req.voice
    if req.model in voice_ids and (voice is None or voice.lower() in OPENAI_VOICES):
        voice = req.model  # a Piper voice id as the model picks that voice over OpenAI's names
    chosen = engine.resolve_voice(voice)
    # Submitted before the response starts: a full queue is a 429, not a cut-off body.
    chunks = engine.stream(req.input, voice=chosen.id, speed=req.speed, priority=Priority.HTTP)
    try:
        encoder = await run_in_threadpool(codecs.AudioEncoder, fmt, chosen.sample_rate)
    except BaseException:
        await chunks.aclose()
        raise
    if req.stream_format == "sse":
        return sse(_speech_events(chunks, encoder, req.input), done=False)
    return DrainingStream(_encoded(chunks, encoder), media_type=encoder.media_type)


async def _encoded(chunks: ItemStream[AudioChunk], encoder: codecs.AudioEncoder) -> AsyncIterator[bytes]:
    """Encoded bytes as each sentence arrives; leaving early stops synthesis (``async with``)."""
    try:
        async with chunks:
            async for chunk in chunks:
                data = await run_in_threadpool(encoder.write, chunk.samples)
                if data:
                    yield data
        tail = await run_in_threadpool(encoder.close)
        if tail:
            yield tail
    finally:
        encoder.close()


async def _speech_events(
    chunks: ItemStream[AudioChunk], encoder: codecs.AudioEncoder, text: str
) -> AsyncIterator[dict[str, Any]]:
    size = 0
    try:
        async for data in _encoded(chunks, encoder):
            size += len(data)
            yield {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
    except APIError as exc:
        yield {"type": "error", "error": exc.to_dict()}
        return
    # Piper has no tokens; approximate OpenAI's accounting so clients reading usage get numbers.
    input_tokens = max(1, math.ceil(len(text) / 4))
    output_tokens = math.ceil(size / 1000)
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    yield {"type": "speech.audio.done", "usage": usage}


async def voices(request: Request) -> Response:
    engine = _tts(request)
    data = [
        {
            "id": v.id,
            "object": "voice",
            "language": v.language,
            "sample_rate": v.sample_rate,
            "default": v.id == engine.default_voice,
        }
        for v in engine.voices()
    ]
    mapping = {name: engine.resolve_voice(name).id for name in OPENAI_VOICES}
    return JSONResponse({"object": "list", "data": data, "openai_voices": mapping})


routes: list[BaseRoute] = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/audio/speech", speech, methods=["POST"]),
    Route("/v1/audio/voices", voices, methods=["GET"]),
]
