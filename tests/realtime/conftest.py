"""Fixtures for the realtime tests: a uvicorn server over fake engines (fast tests).

The slow integration tests use the shared ``server_url`` / ``keyed_server_url`` fixtures of
``tests/conftest.py`` (real engines) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from rt_fakes import FAKE_KEY, FakeEngines, FakeSettings, make_app
from rt_speech import synthesize

from localrt.serving import serve_in_thread


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
def speech(engines: Any) -> dict[str, np.ndarray]:
    """Real Piper speech of the test questions (int16, 24 kHz), for the slow tests."""
    return asyncio.run(synthesize(engines))
