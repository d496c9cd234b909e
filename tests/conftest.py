"""Shared fixtures: the real engines (loaded once per test session) behind a real uvicorn server.

``server_url`` is what users run: ``create_app`` served by uvicorn on a free loopback port. Every server
fixture shares the one ``engines`` object, so the models load once however many servers a test needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from localrt.app import create_app
from localrt.engines import Engines, load_engines
from localrt.serving import serve_in_thread
from localrt.settings import Settings
from tests.sched_helpers import Blocked, Schedulers
from tests.servers import API_KEY, make_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    with serve_in_thread(create_app(settings, engines)) as url:
        yield url


@pytest.fixture(scope="session")
def keyed_server_url(engines: Engines) -> Iterator[str]:
    """A second server over the same engines, with an API key configured."""
    with serve_in_thread(create_app(make_settings(api_key=API_KEY), engines)) as url:
        yield url


@pytest.fixture(scope="session")
def openai_client(server_url: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=120) as client:
        yield client


# --- schedulers for the scheduler tests (tests/sched_helpers.py) -------------------------------------


@pytest.fixture
def make() -> Iterator[Schedulers]:
    """Schedulers closed (and their workers joined) when the test ends."""
    schedulers = Schedulers()
    yield schedulers
    schedulers.close_all()


@pytest.fixture
def blocked(make: Schedulers) -> Iterator[Blocked]:
    state = Blocked(make(slots=1, max_queue=8))
    yield state
    state.gate.set()
