"""Fixtures for the realtime tests: a uvicorn server over fake engines (fast tests).

The slow integration tests use the shared ``server_url`` / ``keyed_server_url`` fixtures of
``tests/conftest.py`` (real engines) instead.

Every test here, fast or slow, runs under ``strict_server_events``: each event any client receives is
validated against OpenAI's types (``strict_events.py``), and a test that received an invalid one fails
even if something between the socket and the test swallowed the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from rt_fakes import FAKE_KEY, FakeEngines, FakeSettings, make_app
from rt_speech import synthesize
from strict_events import Recorder, install

from localrt.catalog import EMBEDDED_VOICE_ID, embedded_voice
from localrt.engines.tts import PiperEngine, read_voice
from localrt.serving import serve_in_thread


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def strict_server_events(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Recorder]:
    recorder = install(monkeypatch)
    yield recorder
    # The check raised where the event arrived; this catches a failure some client swallowed.
    if recorder.failures and not request.node.stash.get(_CALL_FAILED, False):
        pytest.fail("server events failed OpenAI's types:\n" + "\n".join(recorder.failures))


@pytest.fixture
def fake_engines() -> FakeEngines:
    return FakeEngines()


@pytest.fixture
def fake_ws_url(fake_engines: FakeEngines) -> Iterator[str]:
    """ws:// URL of /v1/realtime on a server over this test's fake engines (no API key)."""
    with serve_in_thread(make_app(fake_engines, FakeSettings())) as url:
        yield url.replace("http://", "ws://") + "/v1/realtime"


@pytest.fixture
def fake_keyed_ws_url(fake_engines: FakeEngines) -> Iterator[str]:
    with serve_in_thread(make_app(fake_engines, FakeSettings(api_key=SecretStr(FAKE_KEY)))) as url:
        yield url.replace("http://", "ws://") + "/v1/realtime"


@pytest.fixture(scope="session")
def speech() -> Iterator[dict[str, np.ndarray]]:
    """Real Piper speech of the test questions (int16, 24 kHz), for the slow tests.

    Synthesized with Piper's noise off, so the input is the same in every run: with the voice's
    default noise, an occasional take is misheard by whisper tiny.en and every test using it fails.
    """
    path = embedded_voice()
    assert path is not None
    tts = PiperEngine(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_scale=0.0, noise_w_scale=0.0
    )
    try:
        yield asyncio.run(synthesize(tts))
    finally:
        tts.close()
