"""Every error case of the HTTP API: OpenAI's shape, status, type, code and param; the server survives."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.servers import API_KEY, error_of

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi"}]


def still_serves(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "max_tokens": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"messages": HI}, 400, "missing_required_parameter", "model"),
        ({"model": "gpt-4o"}, 400, "missing_required_parameter", "messages"),
        ({"model": "gpt-4o", "messages": []}, 400, "invalid_value", "messages"),
        ({"model": "gpt-4o", "messages": "hello"}, 400, "invalid_type", "messages"),
        (
            {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "invalid_value",
            "messages[0].role",
        ),
        (
            {"model": "gpt-4o", "messages": [{"content": "x"}]},
            400,
            "missing_required_parameter",
            "messages[0].role",
        ),
        ({"model": "gpt-4o", "messages": HI, "temperature": 3}, 400, "invalid_value", "temperature"),
        ({"model": "gpt-4o", "messages": HI, "temperature": "hot"}, 400, "invalid_type", "temperature"),
        ({"model": "gpt-4o", "messages": HI, "top_p": 0}, 400, "invalid_value", "top_p"),
        ({"model": "gpt-4o", "messages": HI, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        (
            {"model": "gpt-4o", "messages": HI, "presence_penalty": 5},
            400,
            "invalid_value",
            "presence_penalty",
        ),
        (
            {"model": "gpt-4o", "messages": HI, "frequency_penalty": -5},
            400,
            "invalid_value",
            "frequency_penalty",
        ),
        ({"model": "gpt-4o", "messages": HI, "n": 3}, 400, "invalid_value", "n"),
        (
            {"model": "gpt-4o", "messages": HI, "stop": ["a", "b", "c", "d", "e"]},
            400,
            "invalid_value",
            "stop",
        ),
        (
            {"model": "gpt-4o", "messages": HI, "response_format": {"type": "xml"}},
            400,
            "invalid_value",
            "response_format.type",
        ),
        ({"model": "gpt-4o", "messages": HI, "tool_choice": "required"}, 400, "invalid_value", "tool_choice"),
        (
            {
                "model": "gpt-4o",
                "messages": HI,
                "tools": [{"type": "function", "function": {"name": "a"}}],
                "tool_choice": {"type": "function", "function": {"name": "b"}},
            },
            400,
            "invalid_value",
            "tool_choice",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "missing_required_parameter",
            "messages[0].tool_call_id",
        ),
        ({"model": "no-such-model", "messages": HI}, 404, "model_not_found", "model"),
    ],
)
def test_chat_bad_requests(
    http: httpx.Client, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    err = error_of(http.post("/v1/chat/completions", json=body), status)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    still_serves(http)


def test_malformed_json(http: httpx.Client) -> None:
    resp = http.post(
        "/v1/chat/completions",
        content=b'{"model": "gpt-4o", "messages": [',
        headers={"content-type": "application/json"},
    )
    err = error_of(resp, 400)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_json", None)
    resp = http.post("/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    err = error_of(resp, 400)
    assert err["code"] == "invalid_json"
    still_serves(http)


def test_context_length_exceeded(http: httpx.Client, openai_client: openai.OpenAI) -> None:
    huge = "word " * 5000  # n_ctx is 2048 in the tests
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": huge}])
    assert err.value.code == "context_length_exceeded"
    assert err.value.body["param"] == "messages"  # type: ignore[index]
    resp = http.post("/v1/completions", json={"model": "gpt-4o", "prompt": huge, "stream": True})
    assert error_of(resp, 400)["code"] == "context_length_exceeded"
    still_serves(http)


def test_completions_bad_requests(http: httpx.Client) -> None:
    err = error_of(http.post("/v1/completions", json={"model": "gpt-4o"}), 400)
    assert (err["code"], err["param"]) == ("missing_required_parameter", "prompt")
    err = error_of(http.post("/v1/completions", json={"model": "gpt-4o", "prompt": ""}), 400)
    assert (err["code"], err["param"]) == ("invalid_value", "prompt")
    err = error_of(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    still_serves(http)


def test_unknown_url_and_method(http: httpx.Client) -> None:
    err = error_of(http.get("/v1/nothing-here"), 404)
    assert err["code"] == "unknown_url"
    err = error_of(http.get("/v1/chat/completions"), 405)
    assert err["type"] == "invalid_request_error"


def test_api_key_required_when_configured(keyed_server_url: str) -> None:
    with httpx.Client(base_url=keyed_server_url, timeout=60) as client:
        err = error_of(client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}), 401)
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", None, None)
        err = error_of(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_api_key", None)
        assert error_of(client.get("/health"), 401)["code"] is None  # every route needs the key...
        assert client.get("/health/live").json() == {"status": "ok"}  # ...but the liveness probe
    good = openai.OpenAI(base_url=keyed_server_url + "/v1", api_key=API_KEY, max_retries=0)
    assert good.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2).choices  # type: ignore[arg-type]
    bad = openai.OpenAI(base_url=keyed_server_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.code == "invalid_api_key"


def test_no_key_needed_when_not_configured(server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=60) as client:
        assert client.get("/v1/models").status_code == 200
