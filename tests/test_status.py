"""``GET /status`` and ``/status.json``: content, numbers, secrets hidden, and the key (header or ``?key=``).

Fast tests run a real uvicorn server over the fake engines of ``tests/realtime/rt_fakes.py`` (real
schedulers, a real realtime session and turn); one slow test runs over the real models.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localrt.api import status as status_mod
from localrt.app import create_app
from localrt.serving import serve_in_thread
from localrt.settings import Settings
from tests.realtime.rt_fakes import FakeEngines, FakeSettings, FakeSTT, connect, words_reply
from tests.servers import API_KEY

KEY = "sk-status-page-secret-0123"
UPSTREAM_KEY = "sk-upstream-secret-4567"
HEADER = {"Authorization": f"Bearer {KEY}"}


class RemoteSTT(FakeSTT):
    """A fake speech-to-text engine that looks remote: an upstream and a counted ``probe()``."""

    class upstream:
        display = "http://stt.internal:9000/v1"

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0

    async def probe(self) -> dict[str, Any]:
        self.probes += 1
        return {"url": self.upstream.display, "reachable": True, "latency_ms": 1.5, "error": None}


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeEngines]:
    engines = FakeEngines(stt=RemoteSTT())
    engines.llm.engine.script = words_reply("Hello there.")
    yield engines
    engines.close()


@pytest.fixture(scope="module")
def base(fakes: FakeEngines) -> Iterator[str]:
    settings = FakeSettings(
        api_key=KEY,
        llm_api_key=UPSTREAM_KEY,
        stt_engine="openai",
        stt_base_url="http://user:hunter2@stt.internal:9000/v1",
        realtime_max_sessions=7,
    )
    with serve_in_thread(create_app(settings, fakes)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client


def status(http: httpx.Client) -> dict[str, Any]:
    resp = http.get("/status.json", headers=HEADER)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body: dict[str, Any] = resp.json()
    return body


# --- auth ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/status", "/status.json"])
def test_the_key_is_needed(http: httpx.Client, path: str) -> None:
    missing = http.get(path)
    assert missing.status_code == 401 and missing.json()["error"]["code"] is None
    for wrong in (
        http.get(path, headers={"Authorization": "Bearer sk-wrong"}),
        http.get(path, params={"key": "sk-wrong"}),
        http.get(path, params={"key": ""}),
        http.get(path, params={"api-key": KEY + "x"}),
    ):
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert KEY not in wrong.text
    for ok in (
        http.get(path, headers=HEADER),
        http.get(path, params={"key": KEY}),
        http.get(path, params={"api-key": KEY}),
        http.get(path + f"?other=1&key={KEY}"),
    ):
        assert ok.status_code == 200, ok.text
        assert KEY not in ok.text  # never echoed
    # A wrong header is not rescued by a right ?key=.
    assert http.get(path, params={"key": KEY}, headers={"Authorization": "Bearer no"}).status_code == 401


def test_query_key_only_for_the_status_paths(http: httpx.Client) -> None:
    for path in ("/v1/models", "/health", "/debug/timings", "/metrics", "/status/x"):
        assert http.get(path, params={"key": KEY}).status_code == 401, path
    assert http.get("/health", headers=HEADER).status_code == 200


def test_no_key_configured(fakes: FakeEngines) -> None:
    with serve_in_thread(create_app(FakeSettings(), fakes)) as url:
        assert httpx.get(url + "/status", timeout=10).status_code == 200
        body = httpx.get(url + "/status.json", timeout=10).json()
        assert body["settings"]["api_key"] == "unset"


# --- the page ----------------------------------------------------------------------------------------------
def test_page(http: httpx.Client) -> None:
    resp = http.get("/status", params={"key": KEY})
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    for section in ("sec-models", "sec-engines", "sec-sessions", "sec-turns", "sec-settings"):
        assert f'id="{section}"' in html
    for title in ("Models", "Engines", "Realtime sessions", "Turn latency", "Settings"):
        assert f"<h2>{title}" in html
    assert "/*STATUS_" not in html  # the CSS and JS are inlined
    assert 'fetch("status.json"' in html and "setTimeout(refresh, 2000)" in html
    assert "createElementNS(SVG" in html  # the chart is inline SVG
    # Offline: nothing loaded from anywhere (no src/href attributes, no other origin).
    assert not re.search(r"\b(src|href)\s*=", html)
    assert "//cdn" not in html and "https://" not in html
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/=]+'", csp)) == 2
    script = re.search(r"<script>(.*)</script>", html, re.S)
    assert script is not None and status_mod._sha256(script.group(1)) in csp
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_assets_ship_with_the_package() -> None:
    import importlib.resources

    web = importlib.resources.files("localrt") / "web"
    for name in ("status.html", "status.css", "status.js"):
        assert (web / name).is_file(), name


# --- status.json ---------------------------------------------------------------------------------------------
def test_models_engines_and_settings(http: httpx.Client, fakes: FakeEngines) -> None:
    body = status(http)
    assert body["object"] == "status" and body["status"] == "ok"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", body["version"])
    assert body["uptime_s"] >= 0
    by_kind = {m["kind"]: m for m in body["models"]}
    assert by_kind["chat"] == {
        "kind": "chat",
        "id": "fake-llm",
        "loaded": True,
        "default": True,
        "engine": "llama_cpp",
        "location": "local",
    }
    assert by_kind["stt"]["id"] == "fake-whisper"
    assert by_kind["stt"]["location"] == "remote"
    assert by_kind["stt"]["upstream"] == "http://stt.internal:9000/v1"
    assert by_kind["tts"]["voice"] == "fake-voice" and by_kind["tts"]["location"] == "local"
    assert by_kind["vad"]["engine"] == "silero"
    assert body["upstreams"]["stt"]["reachable"] is True
    engines = body["engines"]
    assert set(engines) == {"llm:fake-llm", "stt", "tts"}
    assert engines["tts"]["slots"] == 2 and engines["stt"]["max_queue"] == 32
    assert {"queued", "running", "completed", "rejected"} <= set(engines["llm:fake-llm"])
    settings = body["settings"]
    assert settings["api_key"] == "set" and settings["llm_api_key"] == "set"
    assert settings["stt_api_key"] == "unset" and settings["tts_api_key"] == "unset"
    assert settings["stt_base_url"] == "http://stt.internal:9000/v1"
    assert settings["realtime_max_sessions"] == 7
    for secret in (KEY, UPSTREAM_KEY, "hunter2"):
        assert secret not in http.get("/status.json", headers=HEADER).text


def test_upstreams_are_probed_at_most_every_few_seconds(http: httpx.Client, fakes: FakeEngines) -> None:
    stt = fakes.stt
    assert isinstance(stt, RemoteSTT)
    status(http)
    before = stt.probes
    for _ in range(3):
        status(http)
    assert stt.probes == before


def test_queue_depth_and_running_jobs(http: httpx.Client, fakes: FakeEngines) -> None:
    tts = fakes.tts
    assert tts is not None
    tts.delay = 0.5  # each job holds its worker

    async def hold() -> None:
        streams = [tts.stream(f"words {i}") for i in range(5)]
        await asyncio.sleep(0.15)
        body = await asyncio.to_thread(status, http)
        assert (body["engines"]["tts"]["running"], body["engines"]["tts"]["queued"]) == (2, 3)
        for s in streams:
            await s.aclose()

    try:
        asyncio.run(hold())
    finally:
        tts.delay = 0.0


def test_sessions_and_turns(base: str, http: httpx.Client) -> None:
    ws = base.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"

    async def turn() -> dict[str, Any]:
        async with await connect(ws, additional_headers=HEADER) as client:
            assert (await client.recv())["type"] == "session.created"
            opened = await asyncio.to_thread(status, http)
            per_client = Settings.model_fields["realtime_max_sessions_per_ip"].default
            assert opened["sessions"] == {"open": 1, "max": 7, "max_per_client": per_client}
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi"}],
                    },
                }
            )
            await client.send({"type": "response.create"})
            await client.until("response.done")
        return opened

    asyncio.run(turn())
    deadline = time.monotonic() + 5
    while (body := status(http))["sessions"]["open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert body["sessions"]["open"] == 0
    turns = body["turns"]
    assert turns["latency"]["count"] >= 1 and turns["latency"]["p50_ms"] > 0
    last = turns["recent"][-1]
    assert last["status"] == "completed" and last["from"] == "response"
    assert 0 < last["latency_ms"] < 5000 and "llm_ttft" in last["stages_ms"]


def test_turn_summary_keeps_the_last_fifty() -> None:
    from localrt.timings import TimingLog

    log = TimingLog()
    now = time.monotonic()
    for i in range(60):
        marks = {"speech_stopped": now, "stt_done": now + 0.1, "first_audio_sent": now + 0.1 + i / 1000}
        log.record("s", f"r{i}", marks, status="completed")
    log.record("s", "no-audio", {"response_created": now, "done": now + 0.2}, status="cancelled")
    out = status_mod.turns(log, now + 1)
    assert len(out["recent"]) == 50
    assert out["recent"][0]["response_id"] == "r11" and out["recent"][-1]["latency_ms"] is None
    assert out["recent"][-2]["latency_ms"] == 159.0 and out["recent"][-2]["from"] == "speech"
    assert out["recent"][-2]["stages_ms"]["stt_delay"] == 100.0
    assert out["latency"]["count"] == 49


# --- the real server ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_status_over_the_real_models(keyed_server_url: str) -> None:
    ws = keyed_server_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    header = {"Authorization": f"Bearer {API_KEY}"}

    async def turn() -> None:
        async with await connect(ws, additional_headers=header) as client:
            assert (await client.recv(60))["type"] == "session.created"
            await client.send(
                {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 8}}
            )
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi!"}],
                    },
                }
            )
            await client.send({"type": "response.create"})
            await client.until("response.done", timeout=120)

    asyncio.run(turn())
    with httpx.Client(base_url=keyed_server_url, timeout=60) as http:
        assert http.get("/status").status_code == 401
        page = http.get("/status", params={"key": API_KEY})
        assert page.status_code == 200 and 'id="sec-turns"' in page.text and API_KEY not in page.text
        body = http.get("/status.json", params={"key": API_KEY}).json()
    kinds = {m["kind"]: m for m in body["models"]}
    assert set(kinds) == {"chat", "stt", "tts", "vad", "turn"}
    assert kinds["chat"]["loaded"] and kinds["chat"]["engine"] == "llama_cpp"
    assert all(m["location"] == "local" for m in body["models"])
    assert body["engines"]["stt"]["completed"] >= 0 and "tts" in body["engines"]
    assert body["settings"]["api_key"] == "set" and API_KEY not in str(body)
    assert body["turns"]["recent"] and body["turns"]["recent"][-1]["latency_ms"] > 0
