"""Shared fixtures: the real engines (loaded once per test session) behind a real uvicorn server.

``server_url`` is what users run: ``create_app`` served by uvicorn on a free loopback port. Every server
fixture shares the one ``engines`` object, so the models load once however many servers a test needs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from localrt.app import create_app
from localrt.engines import Engines, load_engines
from localrt.settings import Settings

API_KEY = "sk-localrt-test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """uvicorn running ``app`` in a background thread, stopped at teardown."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws_max_size=16 * 1024 * 1024,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no .env file, no user models folder, n_ctx small enough to overflow."""
    values: dict[str, Any] = {"models_dir": "/nonexistent", "n_ctx": 2048, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def engines(settings: Settings) -> Iterator[Engines]:
    loaded = load_engines(settings)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def server_url(settings: Settings, engines: Engines) -> Iterator[str]:
    with ServerThread(create_app(settings, engines)) as server:
        yield server.url


@pytest.fixture(scope="session")
def keyed_server_url(engines: Engines) -> Iterator[str]:
    """A second server over the same engines, with an API key configured."""
    with ServerThread(create_app(make_settings(api_key=API_KEY), engines)) as server:
        yield server.url


@pytest.fixture(scope="session")
def openai_client(server_url: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=120) as client:
        yield client
