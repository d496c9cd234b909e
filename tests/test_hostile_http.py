"""The HTTP edge against hostile clients (issue 11, items 4, 6, 8, 10, 11): oversized, non-JSON, badly
encoded and deeply nested bodies are refused with OpenAI-shaped errors before they cost memory or
CPU, every route but the liveness probe needs the key, and the server keeps serving."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from localrt.app import create_app
from localrt.engines import Engines
from localrt.serving import serve_in_thread
from tests.servers import API_KEY, error_of, make_settings

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi"}]
JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


def still_serves(http: httpx.Client) -> None:
    assert http.get("/health/live").json() == {"status": "ok"}
    resp = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "max_tokens": 2})
    assert resp.status_code == 200, resp.text


def rss() -> int:
    """Resident memory of this process, which also runs the server (in a thread)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def repeated(chunk: bytes, total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        sent += len(piece)
        yield piece


def expect(resp: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    err = error_of(resp, status)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param), err
    return err


# --- item 4: body size ----------------------------------------------------------------------------------------
def test_declared_oversized_body_is_refused_unread(http: httpx.Client) -> None:
    """The issue's 100 MB chat body (here 200 MB): 413 from Content-Length, nothing buffered."""
    size = 200 * MIB
    before = rss()
    headers = {**JSON, "content-length": str(size)}
    resp = http.post("/v1/chat/completions", content=repeated(b"a" * 65536, size), headers=headers)
    err = expect(resp, 413, "request_too_large")
    assert "max_body_bytes" in err["message"]
    assert rss() - before < 64 * MIB
    still_serves(http)


def test_chunked_oversized_body_is_cut_off_while_counting(http: httpx.Client) -> None:
    before = rss()
    resp = http.post("/v1/completions", content=repeated(b"a" * 65536, 200 * MIB), headers=JSON)
    expect(resp, 413, "request_too_large")
    assert rss() - before < 64 * MIB
    still_serves(http)


@pytest.fixture(scope="module")
def small_body_url(engines: Engines) -> Iterator[str]:
    with serve_in_thread(create_app(make_settings(max_body_bytes=64 * 1024), engines)) as url:
        yield url


def test_the_limit_is_max_body_bytes(small_body_url: str) -> None:
    def body(pad: int) -> bytes:
        return json.dumps({"model": "gpt-4o", "messages": HI, "max_tokens": 2, "pad": "x" * pad}).encode()

    with httpx.Client(base_url=small_body_url, timeout=120) as http:
        expect(
            http.post("/v1/chat/completions", content=body(64 * 1024), headers=JSON), 413, "request_too_large"
        )
        chunked = iter([body(64 * 1024)])  # no Content-Length: counted as it arrives
        expect(http.post("/v1/chat/completions", content=chunked, headers=JSON), 413, "request_too_large")
        assert http.post("/v1/chat/completions", content=body(60 * 1024), headers=JSON).status_code == 200
        still_serves(http)


def test_big_allowed_body_is_parsed(http: httpx.Client) -> None:
    """An 8 MB body under the limit is decoded (in a worker thread) and validated as usual."""
    body = json.dumps({"model": "gpt-4o", "messages": [], "pad": "x" * 8 * MIB}).encode()
    expect(http.post("/v1/chat/completions", content=body, headers=JSON), 400, "invalid_value", "messages")
    still_serves(http)


# --- items 6 and 11: text that cannot be echoed, nesting that cannot be walked ----------------------------------
LONE = "\ud800"  # json.dumps writes it as the escape "\ud800": valid JSON, invalid Unicode


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": LONE}]}),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": HI, "user": "a\udfffb"}),
        ("/v1/completions", {"model": "gpt-4o", "prompt": LONE}),
        ("/v1/audio/speech", {"model": "tts-1", "input": "Hi", "voice": LONE}),
        ("/v1/audio/speech", {"model": LONE, "input": "Hi", "voice": "alloy"}),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": HI, LONE: 1}),
    ],
)
def test_lone_surrogate_is_invalid_json(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    assert b"\\ud" in raw
    err = expect(http.post(path, content=raw, headers=JSON), 400, "invalid_json")
    assert "surrogate" in err["message"]
    still_serves(http)


def test_raw_surrogate_bytes_are_invalid_json(http: httpx.Client) -> None:
    raw = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    expect(http.post("/v1/chat/completions", content=raw, headers=JSON), 400, "invalid_json")
    still_serves(http)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_invalid_json(http: httpx.Client, constant: str) -> None:
    raw = (
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": ' + constant + "}"
    )
    expect(http.post("/v1/chat/completions", content=raw.encode(), headers=JSON), 400, "invalid_json")


def test_surrogate_pairs_are_fine(http: httpx.Client) -> None:
    raw = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi 😀"}], "max_tokens": 2})
    assert "\\ud83d\\ude00" in raw
    assert http.post("/v1/chat/completions", content=raw.encode(), headers=JSON).status_code == 200


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [150, 1001, 100_000])
def test_deep_nesting_is_invalid_json(http: httpx.Client, depth: int) -> None:
    raw = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "x": ' + nested(depth) + "}"
    err = expect(http.post("/v1/chat/completions", content=raw.encode(), headers=JSON), 400, "invalid_json")
    assert "nested" in err["message"]
    still_serves(http)


def test_deep_schema_is_invalid_json(http: httpx.Client) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(80):  # 160 JSON levels
        schema = {"type": "object", "properties": {"a": schema}}
    body = {
        "model": "gpt-4o",
        "messages": HI,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    expect(http.post("/v1/chat/completions", json=body), 400, "invalid_json")
    still_serves(http)


def test_ordinary_nesting_is_accepted(http: httpx.Client) -> None:
    raw = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "x": '
    raw += nested(60) + "}"
    assert http.post("/v1/chat/completions", content=raw.encode(), headers=JSON).status_code == 200


# --- item 10: only JSON runs the model ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "application/jsonp",
    ],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": HI, "max_tokens": 2}),
        ("/v1/completions", {"model": "gpt-4o", "prompt": "Hi", "max_tokens": 2}),
        ("/v1/audio/speech", {"model": "tts-1", "input": "Hi", "voice": "alloy"}),
    ],
)
def test_cross_site_content_types_are_refused(
    http: httpx.Client, content_type: str | None, path: str, body: dict[str, Any]
) -> None:
    """A page on any site may POST text/plain (or no type) without a CORS preflight: refused."""
    headers = {"content-type": content_type} if content_type else {}
    raw = json.dumps(body).encode()
    err = expect(http.post(path, content=raw, headers=headers), 415, "unsupported_content_type")
    assert "application/json" in err["message"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
)
def test_json_content_types_are_accepted(http: httpx.Client, content_type: str) -> None:
    raw = json.dumps({"model": "gpt-4o", "messages": HI, "max_tokens": 2}).encode()
    assert (
        http.post("/v1/chat/completions", content=raw, headers={"content-type": content_type}).status_code
        == 200
    )


def test_the_openai_sdk_still_works(openai_client: openai.OpenAI) -> None:
    assert openai_client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2).choices  # type: ignore[arg-type]
    assert openai_client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2).choices
    speech = openai_client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="Hi.")
    assert speech.http_response.status_code == 200 and len(speech.content) > 100


def test_transcriptions_still_need_multipart(http: httpx.Client) -> None:
    resp = http.post("/v1/audio/transcriptions", content=b"RIFF....", headers={"content-type": "text/plain"})
    assert resp.status_code == 400, resp.text


# --- item 8: the key guards every route but the liveness probe -----------------------------------------------
def test_every_route_needs_the_key(keyed_server_url: str) -> None:
    with httpx.Client(base_url=keyed_server_url, timeout=60) as http:
        for path in ("/health", "/debug/timings", "/v1/models", "/nothing-here"):
            assert error_of(http.get(path), 401)["code"] is None, path
            err = error_of(http.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            assert err["code"] == "invalid_api_key"
        live = http.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        key = {"Authorization": f"Bearer {API_KEY}"}
        assert http.get("/health", headers=key).json()["status"] == "ok"
        timings = http.get("/debug/timings", headers=key)
        assert timings.status_code == 200 and "data" in timings.json()


def test_liveness_probe_without_a_key_configured(http: httpx.Client) -> None:
    assert http.get("/health/live").json() == {"status": "ok"}
    assert http.head("/health/live").status_code == 200
