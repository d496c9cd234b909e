"""A localrt server in a child process, for the fuzz tests.

The fuzzers look for inputs that crash the server: with llama.cpp a crash is a SIGSEGV or SIGABRT that
would take pytest down with it if the server ran in-process, so the server runs in its own process and
the tests ask whether it is still alive. Its memory (RSS) is its own too, not mixed with hypothesis's.

- :func:`real_server`: ``python -m localrt serve`` over the embedded models (``models_dir`` set to a
  folder that does not exist, so only they load).
- :func:`fake_realtime_server`: the realtime endpoint over the fake engines of
  ``tests/realtime/rt_fakes.py``, with the given settings (small caps).

Each yields a :class:`ServerProcess`: ``url``, ``alive()``, ``rss()``, ``log()`` (its stderr) and
``restart()`` (after a crash, so the next example starts on a live server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localrt.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0
# Large buffers always come from mmap and go back to the OS when freed, so RSS tracks what is held,
# not the high-water mark of glibc's heap.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}

_FAKE_MAIN = """
import json, sys
sys.path[:0] = [{realtime!r}, {root!r}]
import uvicorn
from rt_fakes import FakeEngines, FakeSettings, make_app
from localrt.serving import uvicorn_config
app = make_app(FakeEngines(), FakeSettings(**json.loads(sys.argv[2])))
uvicorn.Server(uvicorn_config(app, "127.0.0.1", int(sys.argv[1]), "warning")).run()
"""


class ServerProcess:
    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self._argv = argv
        self._env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="localrt-fuzz-", suffix=".log", delete=False)  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None
        self.crashes: list[str] = []
        self.start()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._argv, env=self._env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self._proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_status(self) -> str:
        """How the process ended: ``SIGSEGV``, ``exit 1``... (``running`` while alive)."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return "running"
        if code < 0:
            return signal.Signals(-code).name
        return f"exit {code}"

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def log(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def restart(self) -> None:
        """Record how the dead server ended and start a fresh one on the same port."""
        self.crashes.append(self.exit_status())
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRT_")}
    return {**env, **MALLOC_ENV, "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def real_server(**settings: Any) -> Iterator[ServerProcess]:
    """``localrt serve`` on the embedded models; ``settings`` become ``LOCALRT_<NAME>`` variables."""
    port = free_port()
    env = {"LOCALRT_MODELS_DIR": "/nonexistent", "LOCALRT_LOG_LEVEL": "warning"}
    env |= {f"LOCALRT_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}
    server = ServerProcess([sys.executable, "-m", "localrt", "serve", "--port", str(port)], _env(env), port)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def fake_realtime_server(settings: dict[str, Any]) -> Iterator[ServerProcess]:
    """The realtime endpoint over ``rt_fakes``' engines, with these settings."""
    port = free_port()
    code = _FAKE_MAIN.format(realtime=str(ROOT / "tests" / "realtime"), root=str(ROOT))
    argv = [sys.executable, "-c", code, str(port), json.dumps(settings)]
    server = ServerProcess(argv, _env({}), port)
    try:
        yield server
    finally:
        server.close()
