"""/v1/models, /v1/models/{id}, /health and model ids/aliases on the chat endpoint."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


def test_list_models(openai_client: openai.OpenAI) -> None:
    ids = {m.id for m in openai_client.models.list()}
    assert "smollm2-135m-instruct" in ids
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-3.5-turbo", "gpt-realtime"} <= ids


def test_retrieve_model_and_alias(openai_client: openai.OpenAI) -> None:
    model = openai_client.models.retrieve("smollm2-135m-instruct")
    assert model.id == "smollm2-135m-instruct" and model.object == "model"
    alias = openai_client.models.retrieve("gpt-4o")
    assert alias.id == "gpt-4o"
    assert alias.model_extra and alias.model_extra["alias_of"] == "smollm2-135m-instruct"


def test_retrieve_unknown_model(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.models.retrieve("no-such-model")
    assert err.value.status_code == 404
    assert err.value.body == {
        "message": "The model 'no-such-model' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1", "gpt-3.5-turbo", "smollm2-135m-instruct"])
def test_chat_accepts_aliases(openai_client: openai.OpenAI, model: str) -> None:
    resp = openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert resp.model == model
    assert resp.choices[0].message.content is not None


def test_health(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok"
    assert body["chat"]["default"] == "smollm2-135m-instruct"
    assert body["chat"]["loaded"] == ["smollm2-135m-instruct"]


def test_speech_models_are_listed(openai_client: openai.OpenAI) -> None:
    models = {m.id: m for m in openai_client.models.list()}
    for name in ("whisper-tiny.en", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
        assert models[name].model_extra and models[name].model_extra["kind"] == "transcription", name
    for name in ("en_US-joe-medium", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
        assert models[name].model_extra and models[name].model_extra["kind"] == "speech", name
