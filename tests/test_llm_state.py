"""Per-session KV state and preemption with the real embedded model (issue 13).

- Two realtime sessions alternating turns: each turn of a session reuses its own previous history from
  the saved context, although the other session used the model in between.
- A long HTTP generation lets a realtime turn submitted meanwhile run between two of its tokens, then
  goes on to the very reply it would have given uninterrupted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localrt import catalog
from localrt.engines.llm import LLMEngine
from localrt.engines.llm_generate import MAX_HOLD_S
from localrt.engines.llm_stream import ChatStream
from localrt.engines.scheduler import Priority
from localrt.engines.types import ChatResult, SamplingParams, TextDelta
from tests.servers import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOPICS = {"a": "cats", "b": "ships"}


@pytest.fixture(scope="module")
def engine() -> Iterator[LLMEngine]:
    """A model of its own: these tests reason about what its one context holds."""
    settings = make_settings()
    model_id = catalog.EMBEDDED_LLM_ID
    loaded = LLMEngine.load(model_id, catalog.scan(settings.models_dir).llms[model_id], settings)
    yield loaded
    loaded.close()


async def run(stream: ChatStream) -> ChatResult:
    async with stream:
        async for _ in stream:
            pass
    return stream.result


async def converse(engine: LLMEngine, *, keyed: bool, turns: int = 3) -> dict[str, list[ChatResult]]:
    """Sessions a and b alternate turns (a1 b1 a2 b2 ...), each with its own system prompt."""
    history: dict[str, list[dict[str, Any]]] = {
        k: [{"role": "system", "content": f"You are assistant {k.upper()}, an expert on {t}. Be brief."}]
        for k, t in TOPICS.items()
    }
    results: dict[str, list[ChatResult]] = {k: [] for k in TOPICS}
    for turn in range(turns):
        for key, topic in TOPICS.items():
            history[key].append({"role": "user", "content": f"Tell me fact number {turn + 1} about {topic}."})
            stream = engine.chat(
                list(history[key]),
                params=SamplingParams(max_tokens=16, temperature=0.0),
                priority=Priority.REALTIME,
                cache_key=f"session-{key}-{keyed}" if keyed else None,
            )
            result = await run(stream)
            results[key].append(result)
            history[key].append({"role": "assistant", "content": result.text})
    return results


async def test_interleaved_sessions_reuse_their_own_history(engine: LLMEngine) -> None:
    results = await converse(engine, keyed=True, turns=2)
    for key, turns in results.items():
        for previous, current in itertools.pairwise(turns):
            # the previous prompt and (nearly all of) its reply are reused, not evaluated again
            assert current.cached_tokens >= previous.prompt_tokens, (key, previous, current)
            assert current.cached_tokens >= previous.prompt_tokens + previous.completion_tokens // 2
            assert current.cached_tokens < current.prompt_tokens

    # Without a cache key the other session's turn in between leaves only the common template prefix.
    plain = await converse(engine, keyed=False, turns=2)
    for turns in plain.values():
        assert turns[1].cached_tokens < turns[0].prompt_tokens


async def test_a_long_http_generation_yields_to_a_realtime_turn(engine: LLMEngine) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon who learns to sing."}]
    params = SamplingParams(max_tokens=120, temperature=0.8, seed=1234)
    alone = await run(engine.chat(messages, params=params))
    assert alone.completion_tokens > 40, alone  # long enough to be preempted

    finished: list[str] = []
    first_token = asyncio.Event()

    async def http() -> ChatResult:
        stream = engine.chat(messages, params=params, priority=Priority.HTTP)
        async with stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    first_token.set()
        finished.append("http")
        return stream.result

    async def voice() -> ChatResult:
        await first_token.wait()
        stream = engine.chat(
            [{"role": "user", "content": "Say hello."}],
            params=SamplingParams(max_tokens=8, temperature=0.0),
            priority=Priority.REALTIME,
        )
        result = await run(stream)
        finished.append("voice")
        return result

    preempted, turn = await asyncio.wait_for(asyncio.gather(http(), voice()), 300)
    assert finished == ["voice", "http"]  # the voice turn did not wait for the story
    assert turn.completion_tokens > 0 and turn.text
    # and the story went on exactly where it was: same sampler, same random state, same context
    assert preempted.text == alone.text
    assert preempted.completion_tokens == alone.completion_tokens
    assert preempted.finish_reason == alone.finish_reason


async def test_a_held_generation_pauses_before_its_next_token(engine: LLMEngine) -> None:
    """A realtime reply holds its chat job while its first clause is spoken: the token loop waits, makes
    the same reply once released, and a hold nobody releases costs one MAX_HOLD_S wait, not one per token."""
    messages = [{"role": "user", "content": "Count from one to twenty, in words."}]
    params = SamplingParams(max_tokens=40, temperature=0.0)
    whole = await run(engine.chat(messages, params=params, priority=Priority.REALTIME))
    stream = engine.chat(messages, params=params, priority=Priority.REALTIME)
    texts: list[str] = []
    async with stream:
        it = aiter(stream)
        texts.append((await anext(it)).text)
        stream.hold()
        await asyncio.sleep(0.2)  # the token in flight may still arrive
        while True:
            nxt = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({nxt}, timeout=0.3)
            if not done:
                break
            texts.append(nxt.result().text)
        paused = len(texts)
        stream.release()
        texts.append((await asyncio.wait_for(nxt, 5)).text)
        stream.hold()  # never released: one wait of MAX_HOLD_S, then the rest at full speed
        started = time.monotonic()
        async for event in it:
            if isinstance(event, TextDelta):
                texts.append(event.text)
        assert time.monotonic() - started < MAX_HOLD_S + 3
    assert paused <= 3 and len(texts) > paused + 1
    assert "".join(texts) == whole.text
