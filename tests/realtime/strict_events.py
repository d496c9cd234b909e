"""Every server event a realtime test receives, validated against OpenAI's published types.

GA events go through ``openai.types.realtime.RealtimeServerEvent``, beta events through
``openai.types.beta.realtime.RealtimeServerEvent``: one pydantic ``TypeAdapter`` over the discriminated
union, as the OpenAI Agents SDK builds it (``agents/realtime/openai_realtime.py``), but validating the
frame's JSON in strict mode, so a wrong literal, a missing field, a string where a number belongs or an
event type the union does not know fails. The Agents SDK turns every such event into an ``error`` in
its session, which is how a one-word mistake broke it while the ``openai`` SDK, which parses without
validating, never noticed.

:func:`install` patches ``recv`` of websockets' asyncio ``ClientConnection``: the one class under the
tests' raw ``websockets`` clients (``rt_fakes.Client``), the ``openai`` SDK's realtime connection and the
Agents SDK, so every frame of every realtime test is checked without touching the tests. Each
connection's dialect is decided as the server decides it (``localrt/realtime/endpoint.py``): from the
handshake's ``OpenAI-Beta`` header and offered subprotocols. A failing event raises
:class:`StrictEventError` (an ``AssertionError``) naming the event type, the field and its value.

The OpenAI models allow fields they do not declare. With ``LOCALRT_RT_UNDECLARED=<file>`` in the
environment every such field is appended to that file; ``undeclared_fields.py`` runs the realtime tests
that way and lists them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pydantic
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GAServerEvent
from pydantic import Field, TypeAdapter
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import ClientConnection as SyncClientConnection

Dialect = Literal["ga", "beta"]

ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "ga": TypeAdapter(Annotated[GAServerEvent, Field(discriminator="type")]),
    "beta": TypeAdapter(Annotated[BetaServerEvent, Field(discriminator="type")]),
}

# Where the server knowingly departs from the published types, the event is adjusted before it is
# validated (as the Agents SDK adjusts ``previous_item_id: null``), each for a reason:
# - beta ``transcription_session.created`` is validated as ``transcription_session.updated``: it is what
#   OpenAI's beta service sent first on an ``intent=transcription`` socket (protocol §9), and the beta
#   union models only ``.updated``, whose payload is the same transcription session object.
# - beta transcription session ``client_secret: null``: the beta type, generated from the REST call that
#   mints an ephemeral key, requires one; a WebSocket session has no key to hand out (GA dropped the field).
# - beta ``session.model`` other than OpenAI's ids: the beta type lists OpenAI's model ids only; a beta
#   client that names no model is told the local model that answers (GA's type takes any string).
#   Clients that validate beta events (older Agents SDK versions) name a model, which is echoed.
# - beta transcription session ``input_audio_transcription.model`` other than OpenAI's three: the
#   model the client named is echoed (a local Whisper may go by any name); GA's type takes any string.
BETA_DEFAULT_MODEL = "gpt-4o-realtime-preview"
BETA_TRANSCRIBE_MODEL = "whisper-1"


def tolerate(event: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """``event`` with the departures listed above replaced by values the types accept."""
    if dialect != "beta":
        return event
    kind = event.get("type")
    session = event.get("session")
    if kind == "transcription_session.created":
        event = {**event, "type": "transcription_session.updated"}
    if isinstance(session, dict):
        if kind in ("transcription_session.created", "transcription_session.updated"):
            if session.get("client_secret", 0) is None:
                session = {**session, "client_secret": {"value": "", "expires_at": 0}}
            transcription = session.get("input_audio_transcription")
            if isinstance(transcription, dict) and isinstance(transcription.get("model"), str):
                transcription = {**transcription, "model": BETA_TRANSCRIBE_MODEL}
                session = {**session, "input_audio_transcription": transcription}
        elif isinstance(session.get("model"), str):
            session = {**session, "model": BETA_DEFAULT_MODEL}
        event = {**event, "session": session}
    return event


UNDECLARED_ENV = "LOCALRT_RT_UNDECLARED"
MAX_LINES = 8


class StrictEventError(AssertionError):
    """A server event that OpenAI's types reject."""


@dataclass
class Recorder:
    """What the checks of one test saw: the number of events and every failure message."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: set[tuple[str, str]] = field(default_factory=set)  # (dialect, event type) of each valid event


def validate(raw: str | bytes, dialect: Dialect) -> pydantic.BaseModel:
    """The event parsed by the dialect's union in strict mode; :class:`StrictEventError` if it fails."""
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise StrictEventError(f"{dialect} server frame is not JSON: {raw[:200]!r}") from exc
    if not isinstance(event, dict):
        raise StrictEventError(f"{dialect} server frame is not a JSON object: {raw[:200]!r}")
    adjusted = tolerate(event, dialect)
    if adjusted is not event:
        raw = json.dumps(adjusted)
    try:
        model: pydantic.BaseModel = ADAPTERS[dialect].validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise StrictEventError(describe(exc, event, adjusted.get("type"), dialect)) from None
    return model


def describe(exc: pydantic.ValidationError, event: dict[str, Any], tag: Any, dialect: Dialect) -> str:
    """``<dialect> event <type>: <field> = <value>: <pydantic's message>``, one line per error."""
    kind = event.get("type")
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if loc and loc[0] == tag:  # the union member the event was validated as: already named
            loc = loc[1:]
        where = ".".join(str(part) for part in loc) or "(event)"
        value = json.dumps(err.get("input"), default=str)
        if len(value) > 200:
            value = value[:200] + "..."
        lines.append(f"{where} = {value}: {err['msg']}")
    if len(lines) > MAX_LINES:  # a union reports each member's complaint: the first few tell enough
        lines[MAX_LINES:] = [f"... and {len(lines) - MAX_LINES} more"]
    return f"{dialect} event {kind!r} fails OpenAI's types:\n  " + "\n  ".join(lines)


def undeclared(model: Any, path: str = "") -> Iterator[str]:
    """The dotted path of every field of ``model`` (and what it nests) that its type does not declare."""
    if isinstance(model, pydantic.BaseModel):
        for name in model.model_extra or {}:
            yield f"{path}{name}"
        for name in type(model).model_fields:
            yield from undeclared(getattr(model, name), f"{path}{name}.")
    elif isinstance(model, list):
        for value in model:
            yield from undeclared(value, f"{path}[].")
    elif isinstance(model, dict):
        for value in model.values():
            yield from undeclared(value, f"{path}*.")


def dialect_of(conn: ClientConnection | SyncClientConnection) -> Dialect | None:
    """The connection's dialect as the server picks it; None for a socket that is not ``/realtime``."""
    request = conn.request
    if request is None or not request.path.split("?")[0].endswith("/realtime"):
        return None
    headers = request.headers
    beta_header = "realtime=v1" in headers.get("OpenAI-Beta", "").replace(" ", "")
    offered = ",".join(headers.get_all("Sec-WebSocket-Protocol")).replace(" ", "").split(",")
    return "beta" if beta_header or "openai-beta.realtime-v1" in offered else "ga"


def check(raw: str | bytes, dialect: Dialect, recorder: Recorder) -> None:
    recorder.checked += 1
    try:
        model = validate(raw, dialect)
    except StrictEventError as exc:
        recorder.failures.append(str(exc))
        raise
    kind = json.loads(raw)["type"]  # as sent: a tolerated event was validated under another name
    recorder.kinds.add((dialect, kind))
    log = os.environ.get(UNDECLARED_ENV)
    if log:
        paths = sorted(set(undeclared(model)))
        if paths:
            with open(log, "a", encoding="utf-8") as out:
                out.writelines(json.dumps([dialect, kind, p]) + "\n" for p in paths)


def _checked(conn: Any, message: Any, decode: bool | None, recorder: Recorder) -> None:
    dialect = dialect_of(conn)
    if dialect is None:
        return
    if isinstance(message, bytes) and decode is not False:
        failure = f"{dialect} server sent a binary frame: {message[:60]!r}"
        recorder.failures.append(failure)
        raise StrictEventError(failure)
    check(message, dialect, recorder)


def install(monkeypatch: Any) -> Recorder:
    """Check every frame any ``/realtime`` client connection receives, until ``monkeypatch`` undoes it.

    Both websockets clients: the asyncio one (raw tests, both SDKs) and the sync one (the fuzzer).
    """
    recorder = Recorder()
    async_recv = ClientConnection.recv
    sync_recv = SyncClientConnection.recv

    async def recv(self: ClientConnection, decode: bool | None = None) -> Any:
        message = await async_recv(self, decode)
        _checked(self, message, decode, recorder)
        return message

    def recv_sync(
        self: SyncClientConnection, timeout: float | None = None, decode: bool | None = None
    ) -> Any:
        message = sync_recv(self, timeout, decode)
        _checked(self, message, decode, recorder)
        return message

    monkeypatch.setattr(ClientConnection, "recv", recv)
    monkeypatch.setattr(SyncClientConnection, "recv", recv_sync)
    return recorder
