"""Fuzzing the realtime loop (issue 11): random, malformed, oversized, deeply nested, invalid-unicode and
out-of-order client events, over one long-lived socket per session kind, on one fake-engine server.

After every frame the server must still answer on the same socket (a sentinel event sent behind each
frame gets its ``error`` back), frames that are not events must get an ``error`` event, and nothing may
be a ``server_error`` (an unexpected exception); see ``fuzz_client.py``. At the end: a ``session.update``
round trip, a flood of large items and appends, a normal turn on the same socket, the server process's
memory (RSS: it runs in a child process) grown by less than the session caps allow plus slack, and no
traceback in its log. Every event received is also checked against OpenAI's types (``conftest.py``).

``test_fuzz_tools_real_llm`` (slow) sends random tool JSON schemas to the real llama.cpp engine.

Hypothesis runs derandomized (the same examples every run); ``LOCALRT_FUZZ_SCALE=10`` and
``LOCALRT_FUZZ_RANDOM=1`` hunt for more (see ``tests/fuzz_values.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_client import KINDS, Fuzzer
from fuzz_events import TOOL_PROMPT, client_events, garbage_frames, tool_responses
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz_server import ServerProcess, fake_realtime_server, real_server
from tests.fuzz_values import dumps, fuzz_settings

# Hypothesis warns when a failing example's strategy repr is large (ours are): not an error here.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# Small caps, so that "memory bounded" means something: whatever the fuzzer sends, one session holds at
# most about this much (audio buffer + conversation), however many huge events it receives.
CAPS = {
    "realtime_max_buffer_bytes": 512 * 1024,
    "realtime_max_item_bytes": 1024 * 1024 + 4096,
    "realtime_max_session_bytes": 4 * 1024 * 1024,
    "realtime_max_items": 64,
}
SLACK_BYTES = 48 * 1024 * 1024  # the server's own objects, event queues, caches, allocator slack


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """One fake-engine server with small per-session caps, in a child process (its RSS is its own)."""
    with fake_realtime_server(CAPS) as proc:
        yield proc


@pytest.fixture
def fuzzers(server: ServerProcess) -> Iterator[dict[str, Fuzzer]]:
    """One socket per session kind (GA, beta, and their transcription-only sessions), kept open."""
    url = server.url.replace("http://", "ws://") + "/v1/realtime"
    opened = {kind: Fuzzer(url, kind, server.log) for kind in KINDS}
    try:
        yield opened
    finally:
        for fuzzer in opened.values():
            fuzzer.close()


def _finish(fuzzers: dict[str, Fuzzer], server: ServerProcess, before: int) -> None:
    """Every session still answers, a session.update round trip works, a flood of large items and
    appends leaves the server's memory bounded by the caps, a normal turn works on every socket, and the
    server logged no traceback."""
    for fuzzer in fuzzers.values():
        fuzzer.reset()
        fuzzer.flood()
    grown = server.rss() - before
    held = CAPS["realtime_max_session_bytes"] + CAPS["realtime_max_buffer_bytes"]
    bound = len(fuzzers) * held + SLACK_BYTES
    assert grown < bound, f"memory grew by {grown / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB)"
    for fuzzer in fuzzers.values():
        fuzzer.normal_turn()
    assert "Traceback" not in server.log(), server.log()[-6000:]


def test_fuzz_client_events(server: ServerProcess, fuzzers: dict[str, Fuzzer]) -> None:
    """Well-typed events of every type with clean or hostile values, in random order, on every kind of
    session; then each socket still works and memory stayed bounded."""
    before = server.rss()
    examples = st.one_of(
        *(
            st.tuples(st.just(kind), st.lists(client_events(f.dialect), min_size=1, max_size=8))
            for kind, f in fuzzers.items()
        )
    )

    @fuzz_settings(50)
    @given(examples)
    def run(example: tuple[str, list[dict[str, Any]]]) -> None:
        kind, events = example
        fuzzers[kind].send([(dumps(event), False) for event in events])

    run()
    _finish(fuzzers, server, before)


def test_fuzz_garbage_frames(server: ServerProcess, fuzzers: dict[str, Fuzzer]) -> None:
    """Frames that are no event at all (random JSON, text, binary, deep nesting, surrogates) get errors."""
    before = server.rss()

    @fuzz_settings(50)
    @given(st.sampled_from(list(fuzzers)), st.lists(garbage_frames(), min_size=1, max_size=6))
    def run(kind: str, frames: list[tuple[str | bytes, bool]]) -> None:
        fuzzers[kind].send(frames)

    run()
    _finish(fuzzers, server, before)


@pytest.mark.slow
def test_fuzz_tools_real_llm() -> None:
    """Random tool JSON schemas (any maxLength / maxItems / nesting) reach llama.cpp's grammar through
    realtime responses: the server must answer each (a response or an error) and stay alive."""
    big_string = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 2000}}}
    many_items = {"type": "array", "items": {"type": "integer"}, "maxItems": 50000}
    base = {"conversation": "none", "output_modalities": ["text"], "max_output_tokens": 4}
    base["input"] = [{"type": "message", "role": "user", "content": [TOOL_PROMPT]}]
    with real_server(n_threads=1, n_ctx=2048) as server:
        fuzzer = Fuzzer(server.url.replace("http://", "ws://") + "/v1/realtime", "ga", server.log)

        @fuzz_settings(20, shrink=False)
        @given(tool_responses())
        @example({**base, "tools": [{"type": "function", "name": "f", "parameters": big_string}]})
        @example(
            {
                **base,
                "tools": [{"type": "function", "name": "f", "parameters": many_items}],
                "tool_choice": "required",
            }
        )
        def run(response: dict[str, Any]) -> None:
            frame = dumps({"type": "response.create", "response": response})
            try:
                fuzzer.send([(frame, False)])
            finally:
                assert server.alive(), f"the server died ({server.exit_status()}) on {frame[:2000]}"

        try:
            run()
            fuzzer.reset()
            fuzzer.normal_turn()
        finally:
            fuzzer.close()
