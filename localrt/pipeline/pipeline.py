"""A pipeline: the extra stages a factory returns, and one session's choice of it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from localrt.errors import InvalidRequest
from localrt.pipeline.stages import TextStage, TranscriptStage
from localrt.settings import Settings

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
OPTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_OPTION_CHARS = 200  # a query parameter's value, as a session may set it
RESERVED_OPTIONS = frozenset(
    {"model", "intent", "api-key", "deployment", "api-version", "call_id", "pipeline"}
)


@dataclass(frozen=True)
class Pipeline:
    """What a pipeline factory returns.

    - ``name``: how sessions select it (``/v1/realtime?pipeline=<name>``), lowercase.
    - ``transcript`` / ``text``: the stages, in order (see :mod:`localrt.pipeline.stages`).
    - ``out_of_band``: the responses that answer the user's turns are out-of-band (``conversation:
      "none"``): their audio and text reach the client, but no assistant item is added to the
      conversation (an interpreter, a captioner). They still take the conversation's turn: one at a time,
      and barge-in cancels them.
    - ``options``: the query parameters a session may set, with their defaults (e.g. ``{"target":
      "French"}``); ``check_options`` validates a session's values (raise
      :class:`~localrt.errors.InvalidRequest` naming the ``param``), at the handshake.
    """

    name: str
    transcript: Sequence[TranscriptStage] = ()
    text: Sequence[TextStage] = ()
    out_of_band: bool = False
    options: Mapping[str, str] = field(default_factory=dict)
    check_options: Callable[[Mapping[str, str]], None] | None = None

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"pipeline name {self.name!r}: use 1-64 of a-z 0-9 _ . - (starting a-z 0-9)")
        for option in self.options:
            if not OPTION_NAME.fullmatch(option) or option in RESERVED_OPTIONS:
                raise ValueError(f"pipeline {self.name!r}: option name {option!r} is not allowed")
        for stage in (*self.transcript, *self.text):
            if not callable(stage):
                raise TypeError(f"pipeline {self.name!r}: stage {stage!r} is not callable")

    def for_session(self, query: Mapping[str, str], settings: Settings) -> SessionPipeline:
        """This pipeline with a session's options (its URL's query parameters); InvalidRequest if one
        is invalid."""
        options = dict(self.options)
        for name in self.options:
            value = query.get(name)
            if value is None:
                continue
            if len(value) > MAX_OPTION_CHARS:
                raise InvalidRequest(
                    f"Query parameter '{name}' is over {MAX_OPTION_CHARS} characters.", param=name
                )
            options[name] = value
        if self.check_options is not None:
            self.check_options(options)
        return SessionPipeline(self, MappingProxyType(options), settings)


@dataclass(frozen=True)
class SessionPipeline:
    """The pipeline one session runs, with its options."""

    pipeline: Pipeline
    options: Mapping[str, str]
    settings: Settings

    @property
    def name(self) -> str:
        return self.pipeline.name
