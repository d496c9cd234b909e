"""Custom pipeline stages: transforms users add to the realtime turn without editing localrt.

A factory ``(settings) -> Pipeline`` returns the extra stages; ``--pipeline module:factory`` makes it the
default of every session, an entry point of the group ``localrt.pipelines`` installs it by name, and a
session selects one by name with ``/v1/realtime?pipeline=<name>`` (plus the pipeline's own options as
query parameters). A minimal one::

    from localrt.pipeline import Pipeline, Reply, Turn, map_turns

    async def pong(turn, ctx):
        return Reply("pong") if turn.text.strip(" .!?").lower() == "ping" else turn

    def factory(settings):
        return Pipeline("pong", transcript=[map_turns(pong)])

The stage protocol is :mod:`.stages`'; :mod:`.interpreter` is the built-in example.
"""

from localrt.pipeline.context import StageContext, Usage
from localrt.pipeline.pipeline import Pipeline, SessionPipeline
from localrt.pipeline.registry import ENTRY_POINT_GROUP, PipelineError, Pipelines, load_pipelines
from localrt.pipeline.stages import (
    Reply,
    TextStage,
    TranscriptStage,
    Turn,
    TurnOutput,
    answer,
    chained,
    map_turns,
    text_pieces,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Pipeline",
    "PipelineError",
    "Pipelines",
    "Reply",
    "SessionPipeline",
    "StageContext",
    "TextStage",
    "TranscriptStage",
    "Turn",
    "TurnOutput",
    "Usage",
    "answer",
    "chained",
    "load_pipelines",
    "map_turns",
    "text_pieces",
]
