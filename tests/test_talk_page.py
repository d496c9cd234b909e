"""The browser talk page at ``/``.

Fast: the page and its files are served (without the key, even on a keyed server: they hold no secret),
under a Content-Security-Policy, and nothing else under ``/web/`` is.

In Chromium, over ``https://`` with a self-signed certificate and a keyed server (fake engines): a wrong
key is refused (close 3000), the right one connects over ``wss://`` and a typed turn gets a reply.

Slow: real headless Chromium (the system's ``chromium``, driven by Playwright; no browser download) opens
the page on the real server with the real models. Its microphone is a WAV of a spoken request (Piper),
fed by Chromium's fake capture device, which loops the file: the first take is a hands-free turn (server
VAD), and the next take arrives while the long reply is still playing, which is the barge-in. Then press
to talk (VAD off by ``session.update``) and a typed turn.
Set ``LOCALRT_SCREENSHOTS=1`` to write the screenshot of the README (``docs/talk.png``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from audio_helpers import wer
from http_fakes import FakeEngines

from localrt.app import create_app
from localrt.audio.resample import resample
from localrt.catalog import EMBEDDED_VOICE_ID, embedded_voice
from localrt.engines.tts import PiperEngine, read_voice
from localrt.serving import free_port, serve_in_thread, server_for, uvicorn_config
from tests.realtime.rt_fakes import FakeEngines as RealtimeFakes
from tests.servers import API_KEY, make_settings
from tests.test_tls import self_signed

REQUEST = "Tell me a long story about a dog."
INSTRUCTIONS = "You are a storyteller. Always answer with a long story of at least five sentences."
CHROMIUM = shutil.which("chromium")
URL = re.compile(r"\b(https?|wss?):\/\/[\w\[]")  # an address to load anything from
DOCS_PNG = Path(__file__).resolve().parent.parent / "docs" / "talk.png"


# --- fast: serving -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_fake_url() -> Iterator[str]:
    fakes = FakeEngines()
    try:
        with serve_in_thread(create_app(make_settings(api_key=API_KEY), fakes.engines())) as url:
            yield url
    finally:
        fakes.close()


def test_page_and_files_are_served_without_the_key(keyed_fake_url: str) -> None:
    with httpx.Client(base_url=keyed_fake_url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "/web/talk.js" in page.text and not URL.search(page.text)  # nothing from elsewhere
        for name in ("talk.js", "mic.js", "player.js", "capture-worklet.js"):
            resp = http.get(f"/web/{name}")
            assert resp.status_code == 200, name
            assert resp.headers["content-type"].startswith("text/javascript"), name
            assert not URL.search(resp.text), (name, URL.search(resp.text))
        assert http.get("/web/talk.css").headers["content-type"].startswith("text/css")
        # Only the page's files: the rest of the package is not served, and the API still needs the key.
        for path in ("/web/__init__.py", "/web/index.html", "/web/..%2Fapp.py", "/web/status.js"):
            assert http.get(path).status_code in (401, 404), path
        assert http.get("/v1/models").status_code == 401


def test_page_speaks_the_protocol_it_should() -> None:
    js = (Path(__file__).resolve().parent.parent / "localrt" / "web" / "talk.js").read_text()
    for needle in (
        "openai-insecure-api-key.",
        'location.protocol === "https:" ? "wss" : "ws"',
        "conversation.item.truncate",
        '"response.audio.delta"',  # beta names accepted too
        "input_audio_buffer.commit",
    ):
        assert needle in js, needle


# --- Chromium over https:// and wss://, with a key (fake engines: no model) -------------------------------
@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    """The app over TLS (a self-signed certificate), keyed, over the realtime tests' fake engines."""
    certfile, keyfile = self_signed(tmp_path)
    fakes = RealtimeFakes()
    app = create_app(make_settings(api_key=API_KEY), fakes)  # type: ignore[arg-type]
    port = free_port()
    server = server_for(
        uvicorn_config(app, "127.0.0.1", port, "warning", ssl_certfile=certfile, ssl_keyfile=keyfile)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"https://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        fakes.close()


def _chromium(pw: Any, *extra: str) -> Any:
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *extra]
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no system chromium (apt-get install chromium); `make install` tries"
)


@needs_chromium
def test_talk_page_over_https_with_a_key(tls_url: str) -> None:
    from playwright.sync_api import sync_playwright

    state = "window.localrtTalk"
    with sync_playwright() as pw:
        browser = _chromium(pw)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(tls_url + "/")  # no key needed for the page itself
            page.fill("#api-key", "sk-wrong")
            page.click("#connect")
            assert _wait(page, f"{state}.state === 'error'", 10), page.evaluate(state)
            assert "3000" in page.inner_text("#error")  # the server's close code for a bad key

            page.fill("#api-key", API_KEY)
            page.click("#connect")
            assert _wait(page, f"{state}.session !== null && {state}.state === 'listening'", 10)
            page.fill("#text", "Hi")
            page.click("#send")
            assert _wait(page, f"{state}.assistantTranscripts.length > 0", 10), page.evaluate(state)
            assert page.evaluate("location.protocol") == "https:"

            # Press to talk: audio goes only while the button is held; the release commits and asks.
            page.check("input[name=mode][value=press]")
            assert _wait(page, f"{state}.session.audio.input.turn_detection === null", 10)
            before = page.evaluate(f"{state}.sentSamples")
            page.wait_for_timeout(300)
            assert page.evaluate(f"{state}.sentSamples") == before  # nothing sent while not held
            page.hover("#talk")
            page.mouse.down()
            page.wait_for_timeout(600)
            page.mouse.up()
            hooks = page.evaluate(state)
            assert hooks["sentSamples"] - before >= 24000 * 0.4, hooks
            assert _wait(page, f"{state}.assistantTranscripts.length > 1", 10), page.evaluate(state)
            assert page.evaluate(f"{state}.events['input_audio_buffer.committed']") == 1
            assert page.evaluate(f"{state}.lastLatencyMs") > 0
            assert len(page.evaluate(f"{state}.errors")) == 2, page.evaluate(state)  # the wrong key's only
        finally:
            browser.close()


# --- slow: real Chromium against the real server ------------------------------------------------------------
@pytest.fixture(scope="module")
def request_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 kHz mono 16-bit WAV: 0.3 s of silence, the spoken request, then 8 s of silence (the loop's gap:
    the reply must have started before the next take, even on a busy machine).

    Piper with its noise off (as the realtime tests' speech), so every run hears the same take.
    """
    path = embedded_voice()
    assert path is not None
    tts = PiperEngine(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_scale=0.0, noise_w_scale=0.0
    )
    try:
        chunk = asyncio.run(tts.synthesize(REQUEST))
    finally:
        tts.close()
    speech = resample(chunk.samples, chunk.sample_rate, 48000).astype(np.int16)
    audio = np.concatenate([np.zeros(14400, np.int16), speech, np.zeros(8 * 48000, np.int16)])
    out = tmp_path_factory.mktemp("talk") / "request.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(audio.astype("<i2").tobytes())
    return out


def _wait(page: Any, condition: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(condition)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.slow
@needs_chromium
def test_talk_page_in_chromium(server_url: str, request_wav: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = [
        f"--use-file-for-fake-audio-capture={request_wav}",  # looped: the request comes again and again
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as pw:
        browser = _chromium(pw, *args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(server_url + "/")
            page.fill("#instructions", INSTRUCTIONS)
            page.fill("#max-tokens", "90")
            page.click("#connect")
            state = "window.localrtTalk"
            replied = "[...document.querySelectorAll('#transcript li.assistant')].some(li => li.textContent.split(' ').length >= 3)"
            turn = _wait(
                page,
                f"{state}.userTranscripts.length > 0 && {state}.playedSamples > 2400 && {state}.lastLatencyMs && {replied}",
                30,
            )
            hooks = page.evaluate(state)
            assert turn, (hooks, page.inner_html("#transcript"), console)
            assert wer(REQUEST, hooks["userTranscripts"][0]) < 0.4, hooks["userTranscripts"]
            assert 0 < hooks["lastLatencyMs"] < 20000
            assert page.inner_text("#latency").endswith(" ms")

            # The request comes round again while the story is still playing: barge-in.
            cut = _wait(page, f"{state}.truncated > 0", 25)
            hooks = page.evaluate(state)
            assert cut, (hooks, console)
            assert hooks["truncates"] >= 1
            sent, acked = hooks["lastTruncate"], hooks["lastTruncated"]
            assert acked == {"itemId": sent["itemId"], "audioEndMs": sent["audioEndMs"]}, (sent, acked)
            assert 0 < sent["audioEndMs"] < sent["receivedMs"], sent  # cut inside what had arrived
            assert hooks["events"]["input_audio_buffer.speech_started"] >= 2
            assert page.locator("#transcript li.assistant.interrupted").count() >= 1
            assert not hooks["errors"], hooks["errors"]
            shot = tmp_path / "talk.png"
            page.screenshot(path=str(shot))

            # Press to talk (no server VAD: the looping microphone is no longer sent), then a typed turn.
            page.check("input[name=mode][value=press]")
            assert page.is_enabled("#talk")
            page.fill("#max-tokens", "12")
            page.click("#apply")
            assert _wait(page, f"!{state}.responseActive", 30), page.evaluate(state)
            replies = len(page.evaluate(f"{state}.assistantTranscripts"))
            page.fill("#text", "Say hello.")
            page.click("#send")
            typed = _wait(page, f"{state}.assistantTranscripts.length > {replies}", 30)
            hooks = page.evaluate(state)
            assert typed, (hooks, console)
            assert "Say hello." in hooks["userTranscripts"]
            assert hooks["session"]["audio"]["input"]["turn_detection"] is None
            assert hooks["session"]["max_output_tokens"] == 12
            assert not hooks["errors"], hooks["errors"]
            if os.environ.get("LOCALRT_SCREENSHOTS"):
                DOCS_PNG.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, DOCS_PNG)
        finally:
            browser.close()
