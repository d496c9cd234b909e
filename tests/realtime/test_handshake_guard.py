"""The realtime handshake guard (issue 11, items 7, 9, 10): Origin allow-list, session caps per client
address and in total, and no key in the logs. Refusals are HTTP responses before the upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from rt_fakes import FAKE_KEY, Client, FakeEngines, FakeSettings, connect, make_app

from localrt.log_redaction import REDACTED, RedactSecrets, redact
from localrt.realtime import handshake_guard
from localrt.realtime.handshake_guard import SessionSlots, origin_allowed
from localrt.serving import serve_in_thread, uvicorn_config

pytestmark = pytest.mark.anyio


def ws_url_of(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/realtime"


@contextlib.contextmanager
def served(**settings: Any) -> Iterator[str]:
    with serve_in_thread(make_app(FakeEngines(), FakeSettings(**settings))) as url:
        yield ws_url_of(url)


async def refused(url: str, status: int, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """Connect expecting an HTTP refusal of the upgrade; its OpenAI-shaped error and headers."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, **kwargs)
    response = info.value.response
    assert response.status_code == status
    body = json.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"], response.headers


async def opens(url: str, **kwargs: Any) -> Client:
    client = await connect(url, **kwargs)
    assert (await client.recv())["type"] == "session.created"
    return client


# --- Origin -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "127.0.0.1:8000", [], True),  # SDKs and servers send no Origin
        ("http://localhost:5173", "127.0.0.1:8000", [], True),
        ("https://127.0.0.1", "127.0.0.1:8000", [], True),
        ("http://[::1]:3000", "127.0.0.1:8000", [], True),
        ("http://app.localhost:3000", "127.0.0.1:8000", [], True),
        ("http://gpu-box:8000", "gpu-box:8000", [], True),  # same origin
        ("https://example.com", "example.com", [], True),  # same origin, default port
        ("http://evil.example", "127.0.0.1:8000", [], False),
        ("http://evil.example:8000", "gpu-box:8000", [], False),
        ("http://localhost.evil.example", "127.0.0.1:8000", [], False),
        ("null", "127.0.0.1:8000", [], False),  # sandboxed frames, file:// pages
        ("http://gpu-box:bad", "gpu-box:bad", [], False),
        ("https://app.example/", "127.0.0.1:8000", ["https://app.example"], True),
        ("http://localhost:5173", "127.0.0.1:8000", ["https://app.example"], False),
        ("http://evil.example", "127.0.0.1:8000", ["*"], True),
    ],
)
def test_origin_rule(origin: str | None, host: str, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


async def test_cross_site_origin_gets_403_before_upgrade(fake_ws_url: str) -> None:
    err, _ = await refused(fake_ws_url, 403, origin="http://evil.example")  # type: ignore[arg-type]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "origin_not_allowed", None)
    assert "realtime_allowed_origins" in err["message"]
    port = fake_ws_url.split(":")[2].split("/")[0]
    for origin in ("http://localhost:3000", f"http://127.0.0.1:{port}"):
        async with await opens(fake_ws_url, origin=origin):
            pass
    async with await opens(fake_ws_url):  # no Origin: an SDK
        pass


async def test_configured_origins() -> None:
    with served(realtime_allowed_origins=["https://app.example"]) as url:
        async with await opens(url, origin="https://app.example"):
            pass
        await refused(url, 403, origin="http://localhost:3000")
    with served(realtime_allowed_origins=["*"]) as url:
        async with await opens(url, origin="http://evil.example"):
            pass


async def test_with_a_key_any_origin_may_try_and_the_key_decides(fake_keyed_ws_url: str) -> None:
    headers = {"Authorization": f"Bearer {FAKE_KEY}"}
    async with await opens(fake_keyed_ws_url, origin="http://app.example", additional_headers=headers):
        pass
    async with await opens(fake_keyed_ws_url, origin="http://localhost:1234", additional_headers=headers):
        pass


async def test_a_configured_list_is_checked_before_the_key() -> None:
    headers = {"Authorization": f"Bearer {FAKE_KEY}"}
    with served(realtime_allowed_origins=["https://app.example"], api_key=FAKE_KEY) as url:
        await refused(url, 403, origin="http://evil.example", additional_headers=headers)
        async with await opens(url, origin="https://app.example", additional_headers=headers):
            pass


# --- session caps ---------------------------------------------------------------------------------------------
def test_slots_count_per_ip_and_in_total() -> None:
    slots = SessionSlots(max_total=3, max_per_ip=2)
    assert slots.acquire("a") is None and slots.acquire("a") is None
    full = slots.acquire("a")
    assert full is not None and full.status == 503 and full.code == "too_many_sessions_per_client"
    assert slots.acquire("b") is None
    full = slots.acquire("c")
    assert full is not None and full.code == "too_many_sessions" and full.retry_after > 0
    assert slots.total == 3
    slots.release("a")
    assert slots.acquire("c") is None
    for ip in ("a", "b", "c"):
        slots.release(ip)
    assert slots.total == 0 and slots.open_for("a") == 0 and not slots._per_ip


async def test_per_ip_cap_gets_503_with_retry_after() -> None:
    with served(realtime_max_sessions_per_ip=2) as url:
        first, second = await opens(url), await opens(url)
        err, headers = await refused(url, 503)
        assert (err["type"], err["code"]) == ("server_error", "too_many_sessions_per_client")
        assert int(headers["Retry-After"]) >= 1
        # Another address is not affected (loopback answers on all of 127/8).
        async with await opens(url, local_addr=("127.0.0.2", 0)):
            pass
        await second.conn.close()
        await _eventually_opens(url)
        await first.conn.close()


async def test_total_cap_gets_503() -> None:
    with served(realtime_max_sessions=2, realtime_max_sessions_per_ip=10) as url:
        clients = [await opens(url), await opens(url, local_addr=("127.0.0.3", 0))]
        err, headers = await refused(url, 503, local_addr=("127.0.0.4", 0))
        assert err["code"] == "too_many_sessions" and "Retry-After" in headers
        for client in clients:
            await client.conn.close()
        await _eventually_opens(url)


async def test_vanished_client_frees_its_slot() -> None:
    """A client that drops the TCP connection without a close frame gives its slot back."""
    with served(realtime_max_sessions_per_ip=1) as url:
        client = await opens(url)
        await refused(url, 503)
        client.conn.transport.abort()
        await _eventually_opens(url)


async def test_refused_clients_take_no_slot() -> None:
    with served(realtime_max_sessions_per_ip=1) as url:
        for _ in range(20):
            await refused(url, 403, origin="http://evil.example")
        async with await opens(url):
            await refused(url, 503)
        await _eventually_opens(url)


async def _eventually_opens(url: str, within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            client = await opens(url)
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 503
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        await client.conn.close()
        return


async def test_without_denial_responses_the_refusal_is_close_1008() -> None:
    """A server without ASGI's websocket.http.response extension: accept, error event, close 1008."""
    app = make_app(FakeEngines(), FakeSettings(realtime_max_sessions_per_ip=1))
    sent: list[dict[str, Any]] = []

    async def attempt(origin: bytes | None) -> None:
        headers = [(b"host", b"127.0.0.1:8000")] + ([(b"origin", origin)] if origin else [])
        scope = {
            "type": "websocket",
            "path": "/v1/realtime",
            "raw_path": b"/v1/realtime",
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
            "client": ("10.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "scheme": "ws",
            "root_path": "",
        }
        messages = iter([{"type": "websocket.connect"}])

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "websocket.disconnect", "code": 1000})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    await attempt(b"http://evil.example")
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"])["error"]["code"] == "origin_not_allowed"
    assert sent[2]["code"] == 1008
    slots = handshake_guard.slots_of(app.state)
    assert slots.total == 0
    slots.acquire("10.0.0.1")  # the one slot of this address is taken
    sent.clear()
    await attempt(None)
    assert sent[-1]["type"] == "websocket.close" and sent[-1]["code"] == 1008
    assert json.loads(sent[1]["text"])["error"]["code"] == "too_many_sessions_per_client"


# --- no key in the logs (item 9) ------------------------------------------------------------------------------
def test_redact_query_secrets() -> None:
    line = "/v1/realtime?model=gpt-realtime&api-key=sk-123&intent=x&access_token=t&api%2Dkey=k&session_id=s"
    out = redact(line)
    assert "sk-123" not in out and "=t&" not in out and "=k&" not in out
    assert out.count(REDACTED) == 3 and "model=gpt-realtime" in out and "session_id=s" in out
    assert redact("/health") == "/health"


def test_uvicorn_config_installs_the_filter() -> None:
    uvicorn_config(make_app(FakeEngines(), FakeSettings()), "127.0.0.1", 0, log_level="warning")
    for name in ("uvicorn.access", "uvicorn.error"):
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RedactSecrets) for f in filters) == 1


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_api_key_query_is_not_logged() -> None:
    settings = FakeSettings(api_key=FAKE_KEY)
    lines = _Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    with serve_in_thread(make_app(FakeEngines(), settings), log_level="info") as base:
        for log in loggers:
            log.addHandler(lines)
        try:
            async with await opens(ws_url_of(base) + f"?model=gpt-realtime&api-key={FAKE_KEY}"):
                pass
            async with httpx.AsyncClient() as http:
                await http.get(base + f"/v1/models?api-key={FAKE_KEY}")
        finally:
            for log in loggers:
                log.removeHandler(lines)
    request_lines = [line for line in lines.lines if "api-key=" in line]
    assert any("WebSocket /v1/realtime" in line for line in request_lines), lines.lines
    assert any("GET /v1/models" in line for line in request_lines), lines.lines
    assert all(FAKE_KEY not in line for line in lines.lines)
    assert all(f"api-key={REDACTED}" in line for line in request_lines)
