"""Fixtures for the realtime tests: a uvicorn server over fake engines (fast tests).

The slow integration tests use the shared ``server_url`` / ``keyed_server_url`` fixtures of
``tests/conftest.py`` (real engines) instead.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from rt_fakes import FAKE_KEY, FakeEngines, FakeSettings, make_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws_max_size=16 * 1024 * 1024
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake realtime server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def fake_engines() -> FakeEngines:
    return FakeEngines()


@pytest.fixture
def fake_ws_url(fake_engines: FakeEngines) -> Iterator[str]:
    """ws:// URL of /v1/realtime on a server over this test's fake engines (no API key)."""
    with _Server(make_app(fake_engines, FakeSettings())) as server:
        yield f"ws://127.0.0.1:{server.port}/v1/realtime"


@pytest.fixture
def fake_keyed_ws_url(fake_engines: FakeEngines) -> Iterator[str]:
    from pydantic import SecretStr

    with _Server(make_app(fake_engines, FakeSettings(api_key=SecretStr(FAKE_KEY)))) as server:
        yield f"ws://127.0.0.1:{server.port}/v1/realtime"
