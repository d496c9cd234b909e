"""A real ``localrt serve`` in a child process, for tests of requests that once crashed the server.

A request that kills the process (SIGSEGV in llama.cpp, SIGABRT) must not run against a server inside
pytest's own process: the crash would take the test run down with it and prove nothing. A
:class:`ServerProcess` runs ``python -m localrt serve`` on a free port with settings given as
``LOCALRT_*`` environment variables, waits until it answers, and on exit stops it (SIGTERM, then
SIGKILL) and, if it had died on its own, prints the end of its log. ``alive()`` is what a crash test
asserts after each hostile request: the process is still running and ``/health`` answers.

    with ServerProcess(load_stt=False) as server:
        httpx.post(server.url + "/v1/completions", json=...)
        assert server.alive(), server.log_tail()

The ``proc_server`` fixture is one such process per test session (chat model only, ``n_ctx`` 2048),
shared by every crash test: import it into a test module (``from tests.proc_server import
proc_server``) or a conftest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from localrt.serving import free_port

# Chat only, and no user models: what the crash tests need, loaded in a second or two.
DEFAULTS: dict[str, Any] = {
    "models_dir": "/nonexistent",
    "n_ctx": 2048,
    "load_stt": False,
    "load_tts": False,
    "load_vad": False,
    "log_level": "info",
}


class ServerProcess:
    """``localrt serve`` in a child process; settings as keyword arguments (``n_ctx=512``)."""

    def __init__(self, *, start_timeout: float = 120.0, api_key: str | None = None, **settings: Any) -> None:
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.start_timeout = start_timeout
        values = {**DEFAULTS, **settings, "host": "127.0.0.1", "port": self.port}
        if api_key is not None:
            values["api_key"] = api_key
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRT_")}
        self.env.update({f"LOCALRT_{k.upper()}": _env_value(v) for k, v in values.items()})
        # Kept open for the child's whole life (not a with block); removed in __exit__.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="localrt-serve-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life -------------------------------------------------------------------------------------------
    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrt", "serve"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"localrt serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"localrt serve did not answer in {self.start_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL); its exit status, None if it never started."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._log.close()
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        crashed = self.proc is not None and self.proc.poll() is not None
        status = self.stop()
        if crashed:  # it died on its own: say how, with what it logged
            print(
                f"\nlocalrt serve had exited with {status}; its log ends:\n{self.log_tail()}", file=sys.stderr
            )
        self.log_path.unlink(missing_ok=True)

    # -- checks -----------------------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/health", headers=self.headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        """Whether the process is still running and ``/health`` answers 200."""
        return self.proc is not None and self.proc.poll() is None and self._answers()

    def log_tail(self, chars: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux), for tests that bound it."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


@pytest.fixture(scope="session")
def proc_server() -> Iterator[ServerProcess]:
    """One ``localrt serve`` child process (chat model only) for the whole test session."""
    with ServerProcess() as server:
        yield server
