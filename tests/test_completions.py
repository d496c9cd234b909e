"""/v1/completions (the legacy prompt API) through the real openai client."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.slow

PROMPT = "The days of the week are Monday, Tuesday,"


def test_completion(openai_client: openai.OpenAI) -> None:
    resp = openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, temperature=0)
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason == "length"  # OpenAI's default max_tokens is 16
    assert resp.usage is not None and resp.usage.completion_tokens == 16


def test_completion_streaming_equals_non_streaming(openai_client: openai.OpenAI) -> None:
    full = openai_client.completions.create(model="gpt-4o", prompt=PROMPT, temperature=0, max_tokens=12)
    chunks = list(
        openai_client.completions.create(
            model="gpt-4o",
            prompt=PROMPT,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completion_stop_and_echo(openai_client: openai.OpenAI) -> None:
    resp = openai_client.completions.create(
        model="gpt-4o", prompt=PROMPT, temperature=0, max_tokens=30, stop=["Friday"], echo=True
    )
    text = resp.choices[0].text
    assert text.startswith(PROMPT)
    assert "Friday" not in text
    assert resp.choices[0].finish_reason == "stop"


def test_completion_token_prompt(openai_client: openai.OpenAI, engines: object) -> None:
    tokens = engines.llm.default.llama.tokenize(PROMPT.encode(), add_bos=False)  # type: ignore[attr-defined]
    resp = openai_client.completions.create(model="gpt-4o", prompt=tokens, temperature=0, max_tokens=4)
    assert resp.choices[0].text
