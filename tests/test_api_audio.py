"""/v1/audio/* through the real openai client (and raw httpx for errors) against the real server.

Most tests use the shared ``server_url`` server. Streaming-order, same-length and disconnect tests use
a second server over the same engines whose Piper engine synthesizes deterministically (noise_w 0,
so every request for a text gives audio of the same length) through a voice the test can hold at a
chosen sentence: that turns "bytes left before synthesis finished" into an order of events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from audio_helpers import encode_file, serve, wer
from piper import PiperVoice

from localrt.app import create_app
from localrt.audio import codecs
from localrt.audio.pcm import int16_to_float32
from localrt.catalog import EMBEDDED_VOICE_ID, embedded_voice
from localrt.engines import Engines
from localrt.engines.scheduler import Priority
from localrt.engines.tts import PiperEngine, Voice, read_voice
from localrt.settings import Settings
from tests.servers import error_of

pytestmark = pytest.mark.slow

ROUND_TRIP = "The quick brown fox jumps over the lazy dog. Please call me back after lunch."
SENTENCE = "Please call me back after lunch tomorrow."


@pytest.fixture(scope="module")
def sentence_audio() -> tuple[np.ndarray, int]:
    """SENTENCE spoken by the real voice, with Piper's noise off: the same take every run (with the
    voice's default noise an occasional take, resampled to 8 kHz, was misheard by tiny.en)."""
    path = embedded_voice()
    assert path is not None
    tts = PiperEngine(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_scale=0.0, noise_w_scale=0.0
    )
    try:
        chunk = asyncio.run(tts.synthesize(SENTENCE))
    finally:
        tts.close()
    return int16_to_float32(chunk.samples), chunk.sample_rate


@pytest.fixture(scope="module")
def sentence_wav(sentence_audio: tuple[np.ndarray, int]) -> bytes:
    samples, rate = sentence_audio
    return encode_file(samples, 16000, "wav", src_rate=rate)


def transcribe(client: openai.OpenAI, data: bytes, name: str, **kwargs: Any) -> Any:
    return client.audio.transcriptions.create(model="whisper-1", file=(name, data), **kwargs)


# --- round trip and inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", codecs.SPEECH_FORMATS)
def test_speech_round_trip(openai_client: openai.OpenAI, fmt: str) -> None:
    response = openai_client.audio.speech.with_raw_response.create(
        model="tts-1",
        voice="alloy",
        input=ROUND_TRIP,
        response_format=fmt,  # type: ignore[arg-type]
    )
    assert response.headers["content-type"].startswith(codecs.MEDIA_TYPES[fmt])
    data = response.content
    if fmt == "pcm":  # raw 24 kHz s16le: wrap it so it can be uploaded
        data = codecs.encode(np.frombuffer(data, "<i2"), 24000, "wav")
        fmt = "wav"
    result = transcribe(openai_client, data, f"speech.{fmt}")
    assert wer(ROUND_TRIP, result.text) < 0.15, result.text


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "ogg"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_transcription_of_formats_and_rates(
    openai_client: openai.OpenAI, sentence_audio: tuple[np.ndarray, int], fmt: str, rate: int
) -> None:
    samples, src_rate = sentence_audio
    channels = 2 if rate in (16000, 48000) else 1
    data = encode_file(samples, rate, fmt, channels, src_rate=src_rate)
    result = transcribe(openai_client, data, f"input.{fmt}")
    assert wer(SENTENCE, result.text) < 0.15, result.text


# --- response formats and streaming ----------------------------------------------------------------

_SRT_BLOCK = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+$")
_VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+$")


def test_response_formats(openai_client: openai.OpenAI, sentence_wav: bytes) -> None:
    as_json = transcribe(openai_client, sentence_wav, "a.wav", response_format="json")
    assert wer(SENTENCE, as_json.text) < 0.15

    text = transcribe(openai_client, sentence_wav, "a.wav", response_format="text")
    assert isinstance(text, str) and text.strip() == as_json.text

    srt = transcribe(openai_client, sentence_wav, "a.wav", response_format="srt")
    blocks = srt.strip().split("\n\n")
    assert blocks and all(_SRT_BLOCK.match(b) for b in blocks), srt

    vtt = transcribe(openai_client, sentence_wav, "a.wav", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.removeprefix("WEBVTT\n\n").strip().split("\n\n")
    assert cues and all(_VTT_CUE.match(c) for c in cues), vtt

    verbose = transcribe(
        openai_client, sentence_wav, "a.wav", response_format="verbose_json",
        timestamp_granularities=["segment", "word"],
    )  # fmt: skip
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(len(sentence_wav) / 32000, abs=0.05)
    assert wer(SENTENCE, verbose.text) < 0.15
    segments = verbose.segments or []
    assert segments and all(0 <= s.start < s.end <= verbose.duration + 0.5 for s in segments)
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(segments))
    words = verbose.words or []
    assert len(words) >= len(SENTENCE.split()) - 1
    assert all(w.start <= w.end for w in words)
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))

    only_words = transcribe(
        openai_client, sentence_wav, "a.wav", response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert only_words.words and not only_words.segments


def test_streaming_transcription(
    openai_client: openai.OpenAI, sentence_audio: tuple[np.ndarray, int]
) -> None:
    samples, rate = sentence_audio
    two = np.concatenate([samples, np.zeros(rate // 2, np.float32), samples])
    data = encode_file(two, 16000, "flac", src_rate=rate)
    events = list(transcribe(openai_client, data, "a.flac", stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert len(events) >= 2 and events[-1].type == "transcript.text.done"
    joined = "".join(e.delta for e in events[:-1])
    assert events[-1].text == joined
    assert wer(f"{SENTENCE} {SENTENCE}", joined) < 0.15


def test_translation(http: httpx.Client, sentence_wav: bytes) -> None:
    # (The SDK marks translations.create deprecated, which the strict warning filter would fail on.)
    r = http.post(
        "/v1/audio/translations", files={"file": ("a.wav", sentence_wav)}, data={"model": "whisper-1"}
    )
    assert r.status_code == 200, r.text
    assert wer(SENTENCE, r.json()["text"]) < 0.15


def test_voices_and_models(http: httpx.Client, openai_client: openai.OpenAI) -> None:
    body = http.get("/v1/audio/voices").json()
    voices = {v["id"]: v for v in body["data"]}
    assert voices[EMBEDDED_VOICE_ID]["default"] is True
    assert voices[EMBEDDED_VOICE_ID]["sample_rate"] == 22050
    assert body["openai_voices"]["alloy"] == EMBEDDED_VOICE_ID
    ids = {m.id for m in openai_client.models.list()}
    assert {"whisper-1", "tts-1", "whisper-tiny.en"} <= ids


# --- bad input -------------------------------------------------------------------------------------


def _speech(**body: Any) -> dict[str, Any]:
    return {"json": {"model": "tts-1", "voice": "alloy", "input": "Hello.", **body}}


def _upload(data: bytes, **fields: str) -> dict[str, Any]:
    return {"files": {"file": ("a.wav", data)}, "data": {"model": "whisper-1", **fields}}


BAD_SPEECH = {
    "empty-input": (_speech(input=""), 400, "invalid_value", "input"),
    "blank-input": (_speech(input="  \n "), 400, "invalid_value", "input"),
    "long-input": (_speech(input="a" * 4097), 400, "invalid_value", "input"),
    "missing-input": ({"json": {"model": "tts-1"}}, 400, "missing_required_parameter", "input"),
    "slow": (_speech(speed=0.1), 400, "invalid_value", "speed"),
    "fast": (_speech(speed=4.5), 400, "invalid_value", "speed"),
    "format": (_speech(response_format="ogg"), 400, "invalid_value", "response_format"),
    "voice": (_speech(voice="nobody"), 400, "invalid_value", "voice"),
    "model": (_speech(model="tts-9"), 404, "model_not_found", "model"),
}


@pytest.mark.parametrize(("request_kwargs", "status", "code", "param"), BAD_SPEECH.values(), ids=BAD_SPEECH)
def test_speech_errors(
    http: httpx.Client, request_kwargs: dict[str, Any], status: int, code: str, param: str
) -> None:
    error = error_of(http.post("/v1/audio/speech", **request_kwargs), status)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    if param == "response_format":
        assert all(f in error["message"] for f in codecs.SPEECH_FORMATS)
    if param == "voice":
        assert EMBEDDED_VOICE_ID in error["message"]
    still = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Ok.", "response_format": "pcm"})
    assert still.status_code == 200 and len(still.content) > 1000


BAD_UPLOADS = {
    "empty": (_upload(b""), 400, "invalid_value", "file"),
    "undecodable": (_upload(b"this is not audio" * 100), 400, "invalid_value", "file"),
    "too-large": (_upload(b"\0" * (25 * 1024 * 1024 + 1)), 413, "file_too_large", "file"),
    "missing-file": ({"data": {"model": "whisper-1"}}, 400, "missing_required_parameter", "file"),
    "format": (_upload(b"x", response_format="xml"), 400, "invalid_value", "response_format"),
    "temperature": (_upload(b"x", temperature="3"), 400, "invalid_value", "temperature"),
    "model": (_upload(b"x", model="whisper-9"), 404, "model_not_found", "model"),
}


@pytest.mark.parametrize(("request_kwargs", "status", "code", "param"), BAD_UPLOADS.values(), ids=BAD_UPLOADS)
def test_transcription_errors(
    http: httpx.Client,
    sentence_wav: bytes,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    error = error_of(http.post("/v1/audio/transcriptions", **request_kwargs), status)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    if param == "response_format":
        assert all(f in error["message"] for f in ("json", "text", "srt", "verbose_json", "vtt"))
    still = http.post("/v1/audio/transcriptions", **_upload(sentence_wav))
    assert still.status_code == 200 and wer(SENTENCE, still.json()["text"]) < 0.15


def test_bad_language(http: httpx.Client, sentence_wav: bytes) -> None:
    r = http.post("/v1/audio/transcriptions", **_upload(sentence_wav, language="xx"))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "language"


# --- streaming speech, on a server whose voice the test can hold ------------------------------------


class HeldVoice:
    """A real PiperVoice that can be held before one chosen sentence; logs what it synthesizes."""

    def __init__(self, real: PiperVoice) -> None:
        self.real = real
        self.config = real.config
        self.log: list[str] = []
        self.hold_before: str | None = None
        self.release = threading.Event()

    def arm(self, sentence: str | None) -> None:
        self.log.clear()
        self.hold_before = sentence
        self.release.clear()

    def synthesize(self, text: str, syn_config: Any = None) -> Iterator[Any]:
        if text == self.hold_before:
            self.release.wait(20)
        yield from self.real.synthesize(text, syn_config=syn_config)
        self.log.append(f"synthesized: {text}")


class RecordingPiper(PiperEngine):
    """Keeps the streams it hands out, so a test can see when the server stopped one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: list[Any] = []

    def stream(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> Any:
        stream = super().stream(text, voice=voice, speed=speed, priority=priority)
        self.streams.append(stream)
        return stream


@pytest.fixture(scope="module")
def held(settings: Settings, engines: Engines) -> Iterator[tuple[str, HeldVoice, RecordingPiper]]:
    path = embedded_voice()
    assert path is not None
    voice = HeldVoice(PiperVoice.load(path))

    def load(_: Voice) -> HeldVoice:
        return voice

    tts = RecordingPiper(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_w_scale=0.0, load_voice=load
    )
    app = create_app(settings, Engines(llm=engines.llm, stt=engines.stt, tts=tts, vad=engines.vad))
    with serve(app) as url:
        yield url, voice, tts
    tts.close()


THREE = ["The first sentence is short.", "Then comes a second one.", "And this is the last sentence."]


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_speech_bytes_arrive_before_synthesis_finishes(
    held: tuple[str, HeldVoice, RecordingPiper], fmt: str
) -> None:
    url, voice, _ = held
    voice.arm(THREE[-1])
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=" ".join(THREE),
        response_format=fmt,  # type: ignore[arg-type]
    ) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        voice.log.append("client: first bytes")
        voice.release.set()
        rest = b"".join(chunks)
    client.close()
    assert first and rest
    assert voice.log.index("client: first bytes") < voice.log.index(f"synthesized: {THREE[-1]}")


def test_speech_sse_events_arrive_before_synthesis_finishes(
    held: tuple[str, HeldVoice, RecordingPiper],
) -> None:
    url, voice, _ = held
    voice.arm(THREE[-1])
    events: list[dict[str, Any]] = []
    body = {"model": "tts-1", "input": " ".join(THREE), "response_format": "pcm", "stream_format": "sse"}
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
                if len(events) == 1:
                    voice.log.append("client: first delta")
                    voice.release.set()
    assert voice.log.index("client: first delta") < voice.log.index(f"synthesized: {THREE[-1]}")
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(events) >= 3
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("fmt", ["mp3", "opus", "wav", "pcm"])
def test_streamed_and_whole_speech_have_the_same_length(
    held: tuple[str, HeldVoice, RecordingPiper], fmt: str
) -> None:
    url, voice, _ = held
    voice.arm(None)
    text = " ".join(THREE)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=fmt).content  # type: ignore[arg-type]
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=text,
        response_format=fmt,  # type: ignore[arg-type]
    ) as response:
        parts = list(response.iter_bytes())
    client.close()
    body = {"model": "tts-1", "input": text, "response_format": fmt, "stream_format": "sse"}
    lines = httpx.post(url + "/v1/audio/speech", json=body, timeout=60).text.splitlines()
    events = [json.loads(line.removeprefix("data:")) for line in lines if line.startswith("data:")]
    from_sse = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")

    def length(data: bytes) -> int:
        return len(data) // 2 if fmt == "pcm" else len(codecs.decode(data, 24000))

    assert len(parts) > 1
    assert length(b"".join(parts)) == length(whole) == length(from_sse)
    assert length(whole) > 24000 * 3


def test_client_disconnect_stops_synthesis(held: tuple[str, HeldVoice, RecordingPiper]) -> None:
    url, voice, tts = held
    sentences = [f"This is sentence number {n}." for n in range(1, 11)]
    voice.arm(sentences[1])
    body = {"model": "tts-1", "input": " ".join(sentences), "response_format": "pcm"}
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=60) as r:
        assert next(r.iter_raw())  # sentence 1 arrived; sentence 2 is held
    stream = tts.streams[-1]
    deadline = time.monotonic() + 10
    while not stream.stopped and time.monotonic() < deadline:  # the server notices the disconnect
        time.sleep(0.01)
    assert stream.stopped
    voice.release.set()
    while not stream.worker_done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.worker_done
    # Sentence 1 was sent; sentence 2 at most was in hand when the client left; none after it.
    done = [f"synthesized: {text}" for text in sentences]
    assert voice.log in (done[:1], done[:2])
