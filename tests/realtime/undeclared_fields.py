"""List the fields localrt's realtime events carry that OpenAI's types do not declare (issue 12).

Not a test: OpenAI's models accept undeclared fields, so nothing fails on them, but each one is either
removed from the server or kept for a reason written next to it (``KEPT`` below). Usage::

    .venv/bin/python tests/realtime/undeclared_fields.py            # the fast realtime tests
    .venv/bin/python tests/realtime/undeclared_fields.py --slow     # all realtime tests (real models)

It runs the realtime tests with ``LOCALRT_RT_UNDECLARED`` set (``strict_events.check`` appends every
undeclared field it meets) and prints each (dialect, event, field) once, marked with its reason if kept.
Exits 1 if a field is neither removed nor listed in ``KEPT``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# (dialect, event type, dotted field path; "*" matches any event) -> why the server keeps sending it.
_LIVE_SESSION = (
    "OpenAI's live service sends it in the session (protocol §4); the type models the create request"
)
_LIVE_BETA = "the live beta session carried the GA values mapped to beta names (protocol §4)"
_SHARED_VAD = "the one server_vad rendering of every session; accepted in updates, no effect in transcription"
KEPT: dict[tuple[str, str, str], str] = {
    ("ga", "*", "session.id"): _LIVE_SESSION,
    ("ga", "*", "session.object"): _LIVE_SESSION,
    ("ga", "*", "session.expires_at"): _LIVE_SESSION + "; it is when localrt closes the session",
    ("beta", "*", "session.id"): _LIVE_SESSION,
    ("beta", "*", "session.object"): _LIVE_SESSION,
    ("beta", "*", "session.expires_at"): _LIVE_SESSION + "; it is when localrt closes the session",
    ("beta", "*", "session.client_secret"): "null, as the live beta session sent it over a WebSocket",
    ("beta", "*", "session.include"): _LIVE_BETA,
    ("beta", "*", "session.prompt"): _LIVE_BETA,
    ("beta", "*", "session.truncation"): _LIVE_BETA,
    ("beta", "*", "session.turn_detection.idle_timeout_ms"): "live beta sessions had it from late 2025 (§4)",
    ("beta", "*", "session.input_audio_noise_reduction"): "the beta transcription update accepts it; echoed",
    ("beta", "*", "session.turn_detection.create_response"): _SHARED_VAD,
    ("beta", "*", "session.turn_detection.interrupt_response"): _SHARED_VAD,
    ("beta", "response.done", "response.usage.input_token_details.cached_tokens_details"): (
        "the live usage object, the same in both shapes (protocol §3)"
    ),
    ("beta", "response.done", "response.usage.input_token_details.image_tokens"): (
        "the live usage object, the same in both shapes (protocol §3)"
    ),
    ("beta", "response.function_call_arguments.done", "name"): (
        "GA sends it and beta clients ignore it (protocol §3); one event shape for both"
    ),
}


def reason(dialect: str, kind: str, path: str) -> str | None:
    return KEPT.get((dialect, kind, path)) or KEPT.get((dialect, "*", path))


def main(argv: list[str]) -> int:
    marker = [] if "--slow" in argv else ["-m", "not slow"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "undeclared.jsonl"
        log.touch()
        env = {**os.environ, "LOCALRT_RT_UNDECLARED": str(log)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *marker, str(HERE)]
        rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL).returncode
        if rc not in (0, 1):  # 1: some test failed, the events seen still count; else nothing ran
            print(f"pytest exited {rc}: run it to see why")
            return 2
        counts = collections.Counter(tuple(json.loads(line)) for line in log.read_text().splitlines())
    unexplained = 0
    for (dialect, kind, path), n in sorted(counts.items()):
        why = reason(dialect, kind, path)
        unexplained += why is None
        print(f"{dialect:4} {kind:55} {path:40} x{n:<5} {why or 'NOT EXPLAINED: remove it or add a reason'}")
    print(f"{len(counts)} undeclared fields, {unexplained} not explained")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
