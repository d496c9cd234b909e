"""Running the app under uvicorn: the CLI's server, and one in a background thread (bench, tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from localrt import lifecycle as lifecycle_mod
from localrt import log_redaction

# Realtime appends may carry up to 15 MiB of audio; the protocol asks servers to accept 16 MiB.
WS_MAX_SIZE = 16 * 1024 * 1024


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    log_level: str = "info",
    *,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration; with ``ssl_certfile`` (and its key) it serves https:// and wss://."""
    # Before uvicorn configures its loggers, which keeps filters: no ?api-key= in any request line.
    log_redaction.install()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=WS_MAX_SIZE,
        # No permessage-deflate: uvicorn inflates every frame of a read before it pauses reading, so a few
        # KiB of compressed frames would queue hundreds of MiB. OpenAI's SDKs do not negotiate it.
        ws_per_message_deflate=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # localrt drains first (lifecycle.Server, settings.shutdown_timeout_s); this is only for what is left.
        timeout_graceful_shutdown=lifecycle_mod.UVICORN_GRACE_S,
        lifespan="on",
    )


def server_for(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that drains the app (``create_app``'s :class:`~.lifecycle.Lifecycle`) before it
    shuts down: in-flight responses end properly, within ``settings.shutdown_timeout_s``."""
    state = getattr(config.app, "state", None)
    settings = getattr(state, "settings", None)
    timeout = float(getattr(settings, "shutdown_timeout_s", 5.0))
    return lifecycle_mod.Server(config, getattr(state, "lifecycle", None), timeout)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` on a free port in a background thread; yields its base URL, stops on exit."""
    port = free_port(host)
    server = server_for(uvicorn_config(app, host, port, log_level))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
