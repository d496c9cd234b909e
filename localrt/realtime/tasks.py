"""The background tasks of one realtime session (structured concurrency without a 3.11 TaskGroup).

Every task a session starts (transcriptions, responses, the idle timer) is spawned here: tracked, its
failure logged, and cancelled and awaited (with a timeout) when the session closes. A failing task does
not take the session down: each one turns its own errors into events before it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0


class TaskSet:
    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session task %s failed", task.get_name(), exc_info=task.exception())

    async def aclose(self) -> None:
        """Cancel every task and wait for them. Cancelling never waits on an engine: a task's queued job
        leaves its queue at once and a running one is told to stop, so they end within a few loop turns
        (the timeout is a backstop, not a wait on another session's work)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            if pending:
                logger.error(
                    "%s: %d tasks did not stop within %.0fs", self._owner, len(pending), CLOSE_TIMEOUT_S
                )
