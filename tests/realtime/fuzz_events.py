"""Hypothesis strategies for realtime client events: every client event type, GA and beta shapes.

- :func:`client_events`: well-typed events (the right ``type``) of every kind, a third with clean values
  (they get past parsing and drive the session: items, responses, audio, tools with random JSON schemas),
  the rest hostile or wild (``tests/fuzz_values.py``): random JSON, lone surrogates, large strings,
  out-of-range numbers, invalid or odd-length base64 audio. Item ids come mostly from a small pool (:data:`ITEM_IDS`), so
  creates, retrieves, truncates and deletes hit the same items; drawn as lists, events come in random
  order (cancel before create, truncate before the item exists...).
- :func:`garbage_frames`: frames that are no valid event at all: random JSON values, non-JSON text,
  binary frames, truncated events, JSON nested thousands of levels deep, lone surrogates; each paired with
  whether the server must answer it with an ``error`` event.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from tests.fuzz_values import MARKER, MOODS, WILD, Values, deep_texts, dumps, json_schemas, sizes, with_raw

ITEM_IDS = ("fz_a", "fz_b", "fz_c")
CALL_IDS = ("call_fz1", "call_fz2")
VOICES = ("alloy", "ash", "fake-voice", "no-such-voice")
TOOL_PROMPT = {"type": "input_text", "text": "Call the tool."}
SpeechSquare = b"\x00\x40\x00\xc0"  # a loud square wave: speech to the fake VAD (turns start and stop)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Events:
    """The event strategies of one dialect, with clean or hostile values."""

    def __init__(self, dialect: str, v: Values) -> None:
        self.dialect = dialect
        self.v = v

    def ev(
        self, kind: str, required: dict[str, Any] | None = None, **optional: Any
    ) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {"type": st.just(kind), **(required or {})}, optional={"event_id": self.v.short(16), **optional}
        )

    def item_ids(self) -> st.SearchStrategy[Any]:
        return self.v.maybe(st.one_of(st.sampled_from(ITEM_IDS), self.v.short(8)), 6)

    def audio(self) -> st.SearchStrategy[Any]:
        """Base64 audio: random bytes of any (odd) length, speech, large appends; when hostile, invalid."""
        valid = [
            st.binary(max_size=4801).map(b64),
            st.integers(1, 40).map(lambda n: b64(SpeechSquare * 600 * n)),
            st.sampled_from([256 * 1024, 700 * 1024]).map(lambda n: b64(b"\x01\x20" * (n // 2))),
        ]
        if not self.v.hostile:
            return st.one_of(*valid)
        bad = st.sampled_from(
            ["", "=", "====", "!!!!", "YQ", "YQ=", "YWJj\n", "aaaaa", "Zm9v YmFy", "\ud800"]
        )
        return st.one_of(*valid, bad, self.v.json(2))

    def content_part(self) -> st.SearchStrategy[Any]:
        v = self.v
        parts = [
            st.fixed_dictionaries({"type": st.just("input_text"), "text": v.maybe(v.text())}),
            st.fixed_dictionaries(
                {"type": st.just("input_audio")}, optional={"audio": self.audio(), "transcript": v.text()}
            ),
            st.fixed_dictionaries(
                {"type": st.just("input_image")},
                optional={
                    "image_url": v.short(),
                    "detail": v.maybe(st.sampled_from(["auto", "low", "high"])),
                },
            ),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["output_text", "text"]), "text": v.maybe(v.text())}
            ),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["output_audio", "audio"])},
                optional={"audio": self.audio(), "transcript": v.text()},
            ),
            st.fixed_dictionaries({"type": st.just("item_reference"), "id": self.item_ids()}),
        ]
        return st.one_of(*parts, *([v.json(3)] if v.hostile else []))

    def items(self) -> st.SearchStrategy[Any]:
        v = self.v
        common = {
            "id": self.item_ids(),
            "object": v.maybe(st.just("realtime.item")),
            "status": v.maybe(st.just("completed")),
        }
        call_ids = v.maybe(st.sampled_from(CALL_IDS))
        kinds = [
            st.fixed_dictionaries(
                {
                    "type": st.just("message"),
                    "role": v.maybe(st.sampled_from(["user", "assistant", "system"]), 6),
                    "content": v.maybe(st.lists(self.content_part(), max_size=3), 6),
                },
                optional=common,
            ),
            st.fixed_dictionaries(
                {"type": st.just("function_call"), "name": v.maybe(st.sampled_from(["get_weather", "f"]))},
                optional={**common, "arguments": v.text(), "call_id": call_ids},
            ),
            st.fixed_dictionaries(
                {"type": st.just("function_call_output"), "call_id": call_ids, "output": v.maybe(v.text())},
                optional=common,
            ),
            st.fixed_dictionaries({"type": st.just("item_reference"), "id": self.item_ids()}),
        ]
        return st.one_of(*kinds, *([v.json(4)] if v.hostile else []))

    def tools(self) -> st.SearchStrategy[Any]:
        v = self.v
        tool = st.fixed_dictionaries(
            {
                "type": v.maybe(st.just("function"), 6),
                "name": v.maybe(st.sampled_from(["get_weather", "f"]), 6),
            },
            optional={"description": v.text(), "parameters": json_schemas(v)},
        )
        return v.maybe(st.lists(tool, max_size=3), 6)

    def tool_choice(self) -> st.SearchStrategy[Any]:
        named = st.fixed_dictionaries(
            {"type": st.just("function"), "name": st.sampled_from(["get_weather", "f", "nope"])}
        )
        return self.v.maybe(st.one_of(st.sampled_from(["auto", "none", "required"]), named))

    def voice(self) -> st.SearchStrategy[Any]:
        voices = st.sampled_from(VOICES)
        return self.v.maybe(st.one_of(voices, st.fixed_dictionaries({"id": voices})))

    def turn_detection(self) -> st.SearchStrategy[Any]:
        m = self.v.maybe
        server_vad = st.fixed_dictionaries(
            {"type": st.just("server_vad")},
            optional={
                "threshold": m(st.floats(0, 1)),
                "prefix_padding_ms": m(st.integers(0, 10_000)),
                "silence_duration_ms": m(st.integers(0, 10_000)),
                "idle_timeout_ms": m(st.one_of(st.none(), st.integers(0, 60_000))),
                "create_response": m(st.booleans()),
                "interrupt_response": m(st.booleans()),
            },
        )
        semantic = st.fixed_dictionaries(
            {"type": st.just("semantic_vad")},
            optional={"eagerness": m(st.sampled_from(["low", "medium", "high", "auto"]))},
        )
        return m(st.one_of(st.none(), server_vad, semantic))

    def transcription(self) -> st.SearchStrategy[Any]:
        m = self.v.maybe
        settings = st.fixed_dictionaries(
            {},
            optional={
                "model": m(st.just("whisper-1")),
                "language": m(st.sampled_from(["en", "fr", "EN "])),
                "prompt": self.v.text(),
            },
        )
        return m(st.one_of(st.none(), settings))

    def tokens(self) -> st.SearchStrategy[Any]:
        return self.v.maybe(st.one_of(st.integers(1, 4096), st.just("inf"), sizes(self.v)))

    def ga_format(self) -> st.SearchStrategy[Any]:
        pcm = st.fixed_dictionaries(
            {"type": st.just("audio/pcm")}, optional={"rate": self.v.maybe(st.just(24000))}
        )
        return self.v.maybe(st.one_of(pcm, st.sampled_from([{"type": "audio/pcmu"}, {"type": "audio/pcma"}])))

    def beta_format(self) -> st.SearchStrategy[Any]:
        return self.v.maybe(st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw"]))

    def modalities(self) -> st.SearchStrategy[Any]:
        return self.v.maybe(st.lists(st.sampled_from(["text", "audio"]), min_size=1, max_size=3), 4)

    def extras(self) -> dict[str, Any]:
        return {"tracing": self.v.json(), "truncation": self.v.json(), "prompt": self.v.json()}

    def session(self) -> st.SearchStrategy[Any]:
        v, m = self.v, self.v.maybe
        common = {
            "model": v.short(),
            "instructions": v.text(),
            "tools": self.tools(),
            "tool_choice": self.tool_choice(),
            **self.extras(),
        }
        if self.dialect == "beta":
            return st.fixed_dictionaries(
                {},
                optional={
                    **common,
                    "modalities": self.modalities(),
                    "voice": self.voice(),
                    "speed": m(st.floats(0.25, 1.5)),
                    "input_audio_format": self.beta_format(),
                    "output_audio_format": self.beta_format(),
                    "input_audio_transcription": self.transcription(),
                    "turn_detection": self.turn_detection(),
                    "temperature": m(st.floats(0.6, 1.2)),
                    "max_response_output_tokens": self.tokens(),
                },
            )
        audio_input = st.fixed_dictionaries(
            {},
            optional={
                "format": self.ga_format(),
                "transcription": self.transcription(),
                "noise_reduction": m(st.fixed_dictionaries({"type": st.just("near_field")})),
                "turn_detection": self.turn_detection(),
            },
        )
        audio_output = st.fixed_dictionaries(
            {}, optional={"format": self.ga_format(), "voice": self.voice(), "speed": m(st.floats(0.25, 1.5))}
        )
        audio = st.fixed_dictionaries({}, optional={"input": m(audio_input), "output": m(audio_output)})
        return st.fixed_dictionaries(
            {"type": m(st.sampled_from(["realtime", "transcription"]), 8)},
            optional={
                **common,
                "output_modalities": self.modalities(),
                "max_output_tokens": self.tokens(),
                "include": m(st.lists(v.short(), max_size=2)),
                "audio": m(audio),
                "id": v.short(),
                "expires_at": v.numbers(),
            },
        )

    def response(self) -> st.SearchStrategy[Any]:
        v, m = self.v, self.v.maybe
        common = {
            "instructions": v.text(),
            "tools": self.tools(),
            "tool_choice": self.tool_choice(),
            "metadata": m(st.dictionaries(v.short(8), v.text(), max_size=20)),
            "conversation": m(st.sampled_from(["auto", "none"])),
            "input": m(st.lists(self.items(), max_size=3)),
        }
        if self.dialect == "ga":
            output = st.fixed_dictionaries({}, optional={"format": self.ga_format(), "voice": self.voice()})
            audio = st.fixed_dictionaries({}, optional={"output": m(output)})
            return st.fixed_dictionaries(
                {},
                optional={
                    **common,
                    "output_modalities": self.modalities(),
                    "audio": m(audio),
                    "max_output_tokens": self.tokens(),
                },
            )
        return st.fixed_dictionaries(
            {},
            optional={
                **common,
                "modalities": self.modalities(),
                "voice": self.voice(),
                "output_audio_format": self.beta_format(),
                "temperature": m(st.floats(0.6, 1.2)),
                "max_response_output_tokens": self.tokens(),
            },
        )

    def any_event(self) -> st.SearchStrategy[dict[str, Any]]:
        m = self.v.maybe
        kinds = [
            self.ev("session.update", {"session": m(self.session(), 8)}),
            self.ev("input_audio_buffer.append", {"audio": self.audio()}),
            self.ev("input_audio_buffer.append", {"audio": self.audio()}),
            self.ev("input_audio_buffer.commit"),
            self.ev("input_audio_buffer.clear"),
            self.ev("conversation.item.create", {"item": self.items()}, previous_item_id=m(st.just("root"))),
            self.ev("conversation.item.create", {"item": self.items()}, previous_item_id=self.item_ids()),
            self.ev("conversation.item.retrieve", {"item_id": self.item_ids()}),
            self.ev("conversation.item.delete", {"item_id": self.item_ids()}),
            self.ev(
                "conversation.item.truncate",
                {"item_id": self.item_ids(), "audio_end_ms": m(st.integers(0, 5000))},
                content_index=m(st.integers(0, 3)),
            ),
            self.ev("response.create", response=m(self.response(), 8)),
            self.ev("response.create", response=m(self.response(), 8)),
            self.ev("response.cancel", response_id=self.v.short()),
        ]
        if self.dialect == "beta":
            kinds.append(self.ev("transcription_session.update", {"session": m(self.session(), 8)}))
        return st.one_of(*kinds)


def client_events(dialect: str) -> st.SearchStrategy[dict[str, Any]]:
    """One well-typed client event of any type in this dialect: clean, hostile or wild values."""
    return st.one_of(*(Events(dialect, v).any_event() for v in MOODS))


def tool_responses() -> st.SearchStrategy[dict[str, Any]]:
    """``response.create`` parameters for the real LLM: out-of-band, text, 4 tokens, one to two tools
    with random JSON schemas (in any mood), any ``tool_choice``."""

    def build(v: Values) -> st.SearchStrategy[dict[str, Any]]:
        tool = st.fixed_dictionaries(
            {"type": st.just("function"), "name": st.sampled_from(["f", "g"]), "parameters": json_schemas(v)},
            optional={"description": v.short()},
        )
        choice = st.one_of(
            st.sampled_from(["auto", "required", "none"]), st.just({"type": "function", "name": "f"})
        )
        return st.fixed_dictionaries(
            {
                "conversation": st.just("none"),
                "output_modalities": st.just(["text"]),
                "max_output_tokens": st.just(4),
                "tools": st.lists(tool, min_size=1, max_size=2),
                "tool_choice": choice,
                "input": st.just([{"type": "message", "role": "user", "content": [TOOL_PROMPT]}]),
            }
        )

    return st.one_of(*(build(v) for v in MOODS))


def garbage_frames() -> st.SearchStrategy[tuple[str | bytes, bool]]:
    """(frame, must the server answer it with an ``error`` event)."""
    v = WILD
    deep_in_event = st.builds(
        lambda raw, where: with_raw(where, raw),
        deep_texts(),
        st.sampled_from(
            [
                {"type": "session.update", "session": {"tracing": MARKER}},
                {"type": "response.create", "response": {"metadata": MARKER}},
                {"type": "conversation.item.create", "item": MARKER},
                {"type": MARKER},
                {"event_id": MARKER, "type": "response.cancel"},
            ]
        ),
    )
    surrogate_events = st.builds(
        lambda s, ev: dumps({**ev, "event_id": s}),
        st.sampled_from(["\ud800", "a\udfff", "\udbff\udbff"]),
        st.sampled_from(
            [{"type": "no.such.event"}, {"type": "response.cancel"}, {"type": "conversation.item.delete"}]
        ),
    )
    truncated = st.builds(
        lambda text, cut: text[: max(1, len(text) * cut // 100)],
        st.sampled_from(
            [
                '{"type":"session.update","session":{"type":"realtime","instructions":"hi"}}',
                '{"type":"input_audio_buffer.append","audio":"AAAA"}',
            ]
        ),
        st.integers(1, 99),
    )
    return st.one_of(
        st.tuples(v.json().filter(lambda x: not isinstance(x, dict)).map(dumps), st.just(True)),
        st.tuples(st.dictionaries(v.short(8), v.json(3), max_size=4).map(dumps), st.just(True)),
        st.tuples(st.text(max_size=40).filter(lambda t: not _is_json(t)), st.just(True)),
        st.tuples(st.binary(max_size=64), st.just(True)),
        st.tuples(truncated, st.just(True)),
        st.tuples(deep_texts(), st.just(True)),
        st.tuples(deep_in_event, st.just(False)),
        st.tuples(surrogate_events, st.just(True)),
        st.tuples(st.sampled_from(["NaN", "Infinity", "-1e99999", "1" * 5000, '"\\ud800"']), st.just(True)),
    )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
