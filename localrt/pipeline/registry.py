"""Finding pipelines: built in, installed (entry points), or named by ``--pipeline module:factory``.

A factory is a callable taking the server's :class:`~localrt.settings.Settings` and returning a
:class:`~.pipeline.Pipeline`. The server knows:

- the built-in ones (:data:`BUILTIN`: ``interpreter``);
- every entry point of the group ``localrt.pipelines`` of the installed packages (its name is the name
  sessions select; its value is the factory, ``module:factory``), so a package adds a pipeline with
  ``[project.entry-points."localrt.pipelines"] mine = "mypkg.stages:make_pipeline"``;
- ``--pipeline``: either ``module:factory`` (a module on ``PYTHONPATH`` or in the working directory,
  imported at start-up; its pipeline is also selectable by its name) or the name of one of the above. It is the **default**: every session that selects no other
  runs it. Unset: sessions run no extra stages unless they select a pipeline.

Every factory is imported and called once, at start-up (:func:`load_pipelines`, from ``create_app``): a
missing module, a missing attribute, a failing factory or a duplicate name stops the server with a
:class:`PipelineError` naming the culprit, before any client connects. Sessions choose among these by
name only (``?pipeline=<name>``): a client never makes the server import anything.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from localrt.errors import InvalidRequest
from localrt.pipeline.pipeline import NAME, Pipeline, SessionPipeline
from localrt.settings import Settings

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "localrt.pipelines"
BUILTIN: dict[str, str] = {"interpreter": "localrt.pipeline.interpreter:factory"}

Factory = Callable[[Settings], Pipeline]


class PipelineError(ValueError):
    """A pipeline that cannot be loaded (a start-up error, never a client's)."""


def check_spec(spec: str) -> str:
    """The syntax of ``--pipeline``: ``module:factory`` or a pipeline name."""
    spec = spec.strip()
    if ":" in spec:
        module, _, attr = spec.partition(":")
        if (
            not module
            or not attr
            or not all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))
        ):
            raise PipelineError(
                f"--pipeline {spec!r}: expected module:factory (e.g. mypackage.stages:make_pipeline)"
            )
    elif not NAME.fullmatch(spec):
        raise PipelineError(f"--pipeline {spec!r}: expected module:factory or a pipeline name")
    return spec


def load_factory(spec: str, source: str = "--pipeline") -> Factory:
    """Import ``module:factory``; a :class:`PipelineError` saying what is wrong."""
    module_name, _, attr = check_spec(spec).partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as uvicorn does: a module in the working
        sys.path.insert(0, os.getcwd())  # directory imports (the localrt script's own folder is first)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise PipelineError(f"{source} {spec!r}: cannot import module {module_name!r}: {exc!r}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PipelineError(f"{source} {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise PipelineError(f"{source} {spec!r}: {attr!r} is not callable")
    factory: Factory = obj
    return factory


def build(spec: str, settings: Settings, source: str = "--pipeline") -> Pipeline:
    """Import and call the factory ``spec``: its pipeline."""
    factory = load_factory(spec, source)
    try:
        pipeline = factory(settings)
    except Exception as exc:
        raise PipelineError(f"{source} {spec!r}: the factory failed: {exc!r}") from exc
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(
            f"{source} {spec!r}: the factory returned {type(pipeline).__name__}, not a "
            "localrt.pipeline.Pipeline"
        )
    return pipeline


class Pipelines:
    """The pipelines sessions may select, by name, and the default one."""

    def __init__(self, settings: Settings, by_name: Mapping[str, Pipeline], default: str | None) -> None:
        self.settings = settings
        self._by_name = dict(by_name)
        self.default = default

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Pipeline | None:
        return self._by_name.get(name)

    def select(self, name: str | None, query: Mapping[str, str]) -> SessionPipeline | None:
        """A session's pipeline: ``name`` (the ``pipeline`` query parameter), else the default; None
        when neither. InvalidRequest (param ``pipeline`` or the option's) for a client's mistake."""
        if name is None or name == "":
            name = self.default
            if name is None:
                return None
        pipeline = self._by_name.get(name)
        if pipeline is None:
            known = ", ".join(self.names()) or "none"
            raise InvalidRequest(
                f"Unknown pipeline {name[:64]!r}; this server offers: {known}.",
                param="pipeline",
                code="invalid_pipeline",
            )
        return pipeline.for_session(query, self.settings)


def _entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found and found[entry.name] != entry.value:
            raise PipelineError(
                f"entry point {ENTRY_POINT_GROUP}:{entry.name} is defined twice "
                f"({found[entry.name]!r} and {entry.value!r})"
            )
        found[entry.name] = entry.value
    return found


def load_pipelines(settings: Settings, *, entry_points: bool = True) -> Pipelines:
    """Every pipeline the server offers (each factory imported and called now)."""
    by_name: dict[str, Pipeline] = {}
    specs = [(name, spec, "built-in pipeline") for name, spec in BUILTIN.items()]
    if entry_points:
        specs += [(n, s, f"entry point {ENTRY_POINT_GROUP}:{n}") for n, s in _entry_points().items()]
    for name, spec, source in specs:
        if name in by_name:
            raise PipelineError(f"{source}: the name {name!r} is taken by a built-in pipeline")
        pipeline = build(spec, settings, source)
        if pipeline.name != name:
            raise PipelineError(f"{source} {spec!r}: the factory's pipeline is named {pipeline.name!r}")
        by_name[name] = pipeline
    default: str | None = None
    if settings.pipeline:
        spec = check_spec(settings.pipeline)
        if ":" in spec:
            pipeline = build(spec, settings)
            other = by_name.get(pipeline.name)
            if other is not None:
                raise PipelineError(
                    f"--pipeline {spec!r}: its name {pipeline.name!r} is already a pipeline's; rename it"
                )
            by_name[pipeline.name] = pipeline
            default = pipeline.name
        elif spec in by_name:
            default = spec
        else:
            raise PipelineError(
                f"--pipeline {spec!r}: no such pipeline (known: {', '.join(sorted(by_name))})"
            )
    if default is not None:
        logger.info("realtime pipeline: %s by default (selectable: %s)", default, ", ".join(sorted(by_name)))
    return Pipelines(settings, by_name, default)


def pipelines_of(state: Any) -> Pipelines:
    """The app's pipelines (``create_app`` loads them at start-up; an app built without them loads them
    here, once)."""
    pipelines = getattr(state, "pipelines", None)
    if not isinstance(pipelines, Pipelines):
        settings = getattr(state, "settings", None)
        pipelines = load_pipelines(settings if isinstance(settings, Settings) else Settings(_env_file=None))
        state.pipelines = pipelines
    return pipelines
