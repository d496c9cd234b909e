"""Hypothesis strategies for HTTP request bodies: chat, completions, speech, transcriptions, and raw bytes.

Each JSON strategy draws a body with clean values (it validates and runs the model), hostile or wild ones
(``tests/fuzz_values.py``: wrong types, lone surrogates, huge numbers, negative or huge ``max_tokens``),
always with random JSON schemas (random ``maxLength`` / ``maxItems`` / nesting) in ``response_format`` and
tool parameters, and token ids inside and outside the vocabulary. :func:`cheap` then forces ``max_tokens`` <= 4 into every body that could
validate, except streamed ones (the client hangs up after a few chunks), so the real model stays cheap.

:func:`raw_requests` draws (route, content type, body bytes) for what no JSON encoder produces: malformed
JSON, wrong content types, deep nesting, escaped lone surrogates, invalid UTF-8, huge numbers.
"""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import numpy as np
from hypothesis import strategies as st

from tests.fuzz_values import CLEAN, MARKER, MOODS, WILD, Values, deep_texts, dumps, json_schemas, with_raw

VOCAB = 49152  # SmolLM2's vocabulary: ids 0..49151
CHEAP_TOKENS = 4
CHAT_MODELS = ("gpt-4o", "smollm2-135m-instruct")
SPEECH_MODELS = ("tts-1", "gpt-4o-mini-tts", "en_US-joe-medium")
VOICES = ("alloy", "echo", "en_US-joe-medium")
BAD_NAMES = ("no-such-model", "whisper-1", "../../etc/passwd", "")
JSON_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/audio/speech")
# Content types a cross-site page may send without a CORS preflight: the server must refuse them (4xx).
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


def _moods(build: Any) -> st.SearchStrategy[Any]:
    """Clean bodies twice as often as hostile or wild ones: only they reach the model."""
    return st.one_of(build(CLEAN), *(build(v) for v in MOODS))


def _pick(v: Values, good: tuple[Any, ...], bad: tuple[Any, ...] = BAD_NAMES) -> st.SearchStrategy[Any]:
    """One of ``good``; when hostile, also one of ``bad`` or any value."""
    return v.maybe(st.sampled_from(good + bad)) if v.hostile else st.sampled_from(good)


def _in(v: Values, clean: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``clean`` values, or when hostile ``hostile`` ones (or any value)."""
    return v.maybe(hostile) if v.hostile else clean


def _max_tokens(v: Values) -> st.SearchStrategy[Any]:
    huge = st.sampled_from([2**31, 2**63, 10**30])
    return _in(
        v, st.one_of(st.integers(1, 8), huge), st.one_of(huge, st.sampled_from([0, -1]), st.integers())
    )


def _sampling(v: Values) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "max_tokens": _max_tokens(v),
        "temperature": _in(v, st.floats(0, 2), st.floats()),
        "top_p": _in(v, st.floats(0.01, 1), st.floats()),
        "stop": v.maybe(st.one_of(v.short(), st.lists(v.short(), max_size=5 if v.hostile else 4))),
        "seed": v.maybe(st.integers()),
        "n": _in(v, st.just(1), st.integers()),
        "stream": v.maybe(st.booleans()),
        "presence_penalty": _in(v, st.floats(-2, 2), st.floats()),
        "user": v.short(),
    }


def _tool(v: Values) -> st.SearchStrategy[Any]:
    function = st.fixed_dictionaries(
        {"name": _pick(v, ("get_weather", "f"), ("bad name!", "", "x" * 65))},
        optional={"description": v.text(), "parameters": json_schemas(v), "strict": v.maybe(st.booleans())},
    )
    return st.fixed_dictionaries(
        {"type": _pick(v, ("function",), ("tool",)), "function": v.maybe(function, 6)}
    )


def _message(v: Values) -> st.SearchStrategy[Any]:
    parts = [
        st.fixed_dictionaries({"type": st.just("text"), "text": v.maybe(v.text())}),
        st.fixed_dictionaries({"type": st.just("refusal"), "refusal": v.text()}),
    ]
    if v.hostile:
        image = st.fixed_dictionaries({"url": v.short()})
        parts.append(st.fixed_dictionaries({"type": st.just("image_url"), "image_url": image}))
    call = st.fixed_dictionaries(
        {
            "id": v.short(),
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": v.short(), "arguments": v.text()}),
        }
    )
    return st.fixed_dictionaries(
        {
            "role": _pick(v, ("system", "developer", "user", "assistant"), ("tool", "function", "")),
            "content": v.maybe(st.one_of(v.text(), st.lists(st.one_of(*parts), max_size=3)), 6),
        },
        optional={
            "name": v.short(),
            "tool_call_id": v.short(),
            "tool_calls": v.maybe(st.lists(call, max_size=2)),
        },
    )


def _chat(v: Values) -> st.SearchStrategy[Any]:
    m = v.maybe
    schema = st.fixed_dictionaries(
        {"name": _pick(v, ("x", "answer"), ("", "a b"))},
        optional={"schema": json_schemas(v), "strict": m(st.booleans())},
    )
    response_format = st.one_of(
        st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": m(schema, 6)}),
    )
    named = st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "zz"])}),
        }
    )
    return st.fixed_dictionaries(
        {"model": _pick(v, CHAT_MODELS), "messages": m(st.lists(_message(v), min_size=1, max_size=4), 6)},
        optional={
            **_sampling(v),
            "max_completion_tokens": _max_tokens(v),
            "stream_options": m(st.fixed_dictionaries({"include_usage": m(st.booleans())})),
            "frequency_penalty": _in(v, st.floats(-2, 2), st.floats()),
            "logprobs": m(st.booleans()),
            "response_format": m(response_format, 6),
            "tools": m(st.lists(_tool(v), max_size=3), 6),
            "tool_choice": m(st.one_of(st.sampled_from(["none", "auto", "required"]), named), 6),
            "parallel_tool_calls": m(st.booleans()),
        },
    )


def _token_ids(v: Values) -> st.SearchStrategy[list[Any]]:
    ids = st.one_of(
        st.integers(0, VOCAB - 1),
        st.sampled_from([VOCAB - 1, VOCAB, VOCAB + 1, 2**31 - 1, 2**31, -1, 999_999_999, 2**63]),
        st.integers(),
    )
    return st.lists(ids if v.hostile else st.integers(0, VOCAB - 1), max_size=8)


def _completion(v: Values) -> st.SearchStrategy[Any]:
    m = v.maybe
    if v.hostile:
        many = st.lists(_token_ids(v), max_size=3)
        prompt = st.one_of(v.text(), st.lists(v.short(), max_size=3), _token_ids(v), many)
    else:  # one prompt, as text, one text in a list, token ids, or one list of token ids
        ids = _token_ids(v).filter(bool)
        prompt = st.one_of(
            v.text().filter(bool), st.lists(v.short(), min_size=1, max_size=1), ids, ids.map(lambda x: [x])
        )
    return st.fixed_dictionaries(
        {"model": _pick(v, CHAT_MODELS), "prompt": m(prompt, 6)},
        optional={
            **_sampling(v),
            "suffix": m(v.short()),
            "echo": m(st.booleans()),
            "logprobs": _in(v, st.integers(0, 5), st.integers()),
            "best_of": _in(v, st.just(1), st.integers()),
        },
    )


def _speech(v: Values) -> st.SearchStrategy[Any]:
    voice = st.one_of(_pick(v, VOICES), st.fixed_dictionaries({"id": _pick(v, VOICES)}))
    text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=48) if not v.hostile else v.text()
    formats = ("mp3", "opus", "aac", "flac", "wav", "pcm")
    return st.fixed_dictionaries(
        {"model": _pick(v, SPEECH_MODELS), "input": v.maybe(text, 6)},
        optional={
            "voice": voice,
            "response_format": _pick(v, formats, ("ogg", "")),
            "speed": _in(v, st.floats(0.25, 4.0), st.floats()),
            "stream_format": _pick(v, ("audio", "sse"), ("json",)),
            "instructions": v.text(),
        },
    )


def chat_bodies() -> st.SearchStrategy[Any]:
    return _moods(_chat).map(cheap)


def completion_bodies() -> st.SearchStrategy[Any]:
    return _moods(_completion).map(cheap)


def speech_bodies() -> st.SearchStrategy[Any]:
    return _moods(_speech)


def cheap(body: Any) -> Any:
    """``max_tokens`` <= 4 in a body that could run the model, unless it streams (then the client stops
    reading after a few chunks and a huge value is exercised too)."""
    if not isinstance(body, dict) or body.get("stream") is True:
        return body
    present = [k for k in ("max_tokens", "max_completion_tokens") if k in body]
    for key in present:
        value = body[key]
        if isinstance(value, int) and not isinstance(value, bool) and value > CHEAP_TOKENS:
            body[key] = CHEAP_TOKENS
    if not present:
        body["max_tokens"] = CHEAP_TOKENS
    return body


# --- transcriptions: multipart built by hand, so names, values and structure can be anything -------------
def wav_bytes(seconds: float, rate: int, channels: int, noise: bool) -> bytes:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(n)
    samples = rng.normal(0, 0.3, n) if noise else 0.4 * np.sin(2 * np.pi * 300 * t)
    pcm = np.repeat((samples * 32767).astype("<i2")[:, None], channels, axis=1)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def audio_files() -> st.SearchStrategy[bytes]:
    wav = st.builds(
        wav_bytes,
        st.sampled_from([0.0, 0.05, 0.5, 1.0]),
        st.sampled_from([8000, 16000, 44100]),
        st.sampled_from([1, 2]),
        st.booleans(),
    )
    return st.one_of(
        wav,
        wav,
        wav,
        st.builds(lambda w, cut: w[: max(1, len(w) * cut // 100)], wav, st.integers(1, 99)),
        # a header claiming 8 channels at 192 kHz in 2-byte blocks, then 16 bytes
        st.builds(lambda w: w[:22] + b"\x08\x00\x00\xee\x02\x00" + w[28:44] + b"\xff" * 16, wav),
        # a data chunk claiming 4 GB, then what there is
        st.builds(lambda w: w[:40] + b"\xff\xff\xff\xff" + w[44:], wav),
        st.binary(max_size=2048),
        st.builds(
            lambda magic, b: magic + b,
            st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3", b"\x1aE\xdf\xa3"]),
            st.binary(max_size=512),
        ),
    )


def form_fields() -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Form fields: mostly known names with valid values, now and then an invalid value or unknown field."""
    text = st.text(st.characters(codec="utf-8"), max_size=24).map(str.encode)
    values: dict[bytes, tuple[list[bytes], list[bytes]]] = {
        b"model": ([b"whisper-1", b"whisper-tiny.en"], [b"gpt-4o-transcribe", b"", b"nope"]),
        b"language": ([b"en"], [b"fr", b"xx", b"", b"EN", b"\xff"]),
        b"response_format": ([b"json", b"text", b"srt", b"verbose_json", b"vtt"], [b"mp3", b""]),
        b"temperature": ([b"0", b"0.5"], [b"2", b"-1", b"nan", b"inf", b"1e999", b"x"]),
        b"timestamp_granularities[]": ([b"word", b"segment"], [b"char"]),
        b"stream": ([b"true", b"false"], [b"1", b"yes"]),
    }

    def value(name: bytes) -> st.SearchStrategy[bytes]:
        good, bad = values[name]
        return st.one_of(
            st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad)
        )

    known = st.sampled_from(sorted(values)).flatmap(lambda name: st.tuples(st.just(name), value(name)))
    prompt = st.tuples(st.just(b"prompt"), st.one_of(text, st.binary(max_size=16)))
    unknown = st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=24))
    return st.lists(st.one_of(known, known, known, prompt, unknown), max_size=5)


def multipart(
    fields: list[tuple[bytes, bytes]], file: bytes | None, filename: bytes, boundary: bytes = b"fuzzb0undary"
) -> bytes:
    parts = []
    for name, value in fields:
        parts.append(b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value)
    if file is not None:
        head = b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        parts.append(head + b"Content-Type: application/octet-stream\r\n\r\n" + file)
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary + b"--\r\n"


def transcription_forms() -> st.SearchStrategy[tuple[bytes, str]]:
    """(body, content type): mostly well-formed multipart forms with random fields and files."""
    form = st.builds(
        lambda fields, model, file, name: multipart([(b"model", model), *fields], file, name),
        form_fields(),
        st.sampled_from([b"whisper-1", b"whisper-1", b"nope"]),
        st.one_of(st.none(), *[audio_files()] * 4),
        st.sampled_from([b"a.wav", b"", b"../../x.mp3", b"\xff\xfe.wav", b'a"b.wav']),
    )
    broken = st.builds(lambda body, cut: body[: max(1, len(body) * cut // 100)], form, st.integers(1, 99))
    types = st.sampled_from(
        ["multipart/form-data; boundary=fuzzb0undary", "multipart/form-data", "application/json"]
    )
    return st.one_of(
        st.tuples(form, st.just("multipart/form-data; boundary=fuzzb0undary")),
        st.tuples(form, st.just("multipart/form-data; boundary=fuzzb0undary")),
        st.tuples(st.one_of(broken, st.binary(max_size=256)), types),
    )


# --- raw bodies for the JSON routes ------------------------------------------------------------------------
_VALID = {
    "/v1/chat/completions": {
        "model": "gpt-4o",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/completions": {"model": "gpt-4o", "max_tokens": 2, "prompt": "hi"},
    "/v1/audio/speech": {"model": "tts-1", "input": "hi", "voice": "alloy"},
}
_SLOTS = {
    "/v1/chat/completions": {
        "model": "gpt-4o",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": MARKER}],
    },
    "/v1/completions": {"model": "gpt-4o", "max_tokens": 2, "prompt": MARKER},
    "/v1/audio/speech": {"model": "tts-1", "input": "hi", "voice": MARKER},
}


def raw_requests() -> st.SearchStrategy[tuple[str, str | None, bytes]]:
    """(route, content type, body) for the JSON routes."""
    route = st.sampled_from(JSON_ROUTES)
    json_type = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/x+json"])
    any_type = st.one_of(json_type, st.sampled_from([*SIMPLE_TYPES, "application/xml", ""]), st.none())
    raw_value = st.one_of(
        deep_texts(),
        st.sampled_from(
            ['"\\ud800"', '"a\\udfff"', "1e400", "-1e400", "1" * 5000, "NaN", "Infinity", '"\\u0000"']
        ),
    )

    def spliced(r: str, raw: str) -> bytes:
        return with_raw(_SLOTS[r], raw).encode()

    def body_for(r: str) -> st.SearchStrategy[bytes]:
        valid = dumps(_VALID[r]).encode()
        return st.one_of(
            st.builds(spliced, st.just(r), raw_value),
            st.builds(lambda cut: valid[: max(1, len(valid) * cut // 100)], st.integers(0, 99)),
            st.sampled_from(
                [b"", b" ", b"null", b"[]", b"\xef\xbb\xbf" + valid, valid.decode().encode("utf-16")]
            ),
            st.builds(
                lambda b: valid[:-2] + b + b'"}', st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])
            ),
            deep_texts().map(str.encode),
            WILD.json().map(lambda x: dumps(x).encode()),
            st.binary(max_size=64),
        )

    return route.flatmap(
        lambda r: st.one_of(
            st.tuples(st.just(r), json_type, body_for(r)),
            st.tuples(st.just(r), any_type, st.just(json.dumps(_VALID[r]).encode())),
        )
    )
