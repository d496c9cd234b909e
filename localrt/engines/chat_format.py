"""Chat messages -> one prompt string in the model's own chat template, and tool-call grammars.

We render prompts ourselves (with llama-cpp-python's Jinja2 formatter over the GGUF's template) rather than
use its chat handlers, so that every model gets the same tool-calling behaviour:

- Tools are described in the system message; the model calls one by answering
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes convention many small models
  were tuned on). Earlier calls and tool results are written back into the history in the same form, as
  assistant text and as a user turn wrapped in ``<tool_response>``, which every template accepts.
- ``tool_choice`` "required" or a named function: the reply is generated after ``<tool_call>`` under a
  GBNF grammar built from the functions' JSON schemas, so even a 135M model emits valid arguments.
- ``response_format`` json_object / json_schema: the same, with the user's schema.

Schemas become grammars in :mod:`.grammar`, which bounds them first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from localrt.errors import InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"

# Used when a GGUF carries no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class Prompt:
    text: str
    stop: list[str]
    added_special: bool


@dataclass
class ToolPlan:
    """What the tools of a request ask of generation."""

    mode: Literal["off", "auto", "forced"] = "off"
    functions: list[dict[str, Any]] = field(default_factory=list)  # {"name", "description", "parameters"}
    described: list[dict[str, Any]] = field(default_factory=list)  # the ones shown to the model

    def call_schema(self) -> dict[str, Any]:
        """JSON schema of ``{"name": ..., "arguments": ...}`` for the callable functions."""
        options = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": fn["name"]},
                    "arguments": parameters_schema(fn.get("parameters")),
                },
                "required": ["name", "arguments"],
            }
            for fn in self.functions
        ]
        return options[0] if len(options) == 1 else {"anyOf": options}


def parameters_schema(parameters: object) -> dict[str, Any]:
    """The JSON schema of a function's arguments (an object of anything when it declares none)."""
    if not isinstance(parameters, dict) or not parameters:
        return {"type": "object"}
    return parameters


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> ToolPlan:
    functions = [t["function"] for t in tools or [] if t.get("type", "function") == "function"]
    if not functions:
        if isinstance(tool_choice, dict) or tool_choice == "required":
            raise InvalidRequest("tool_choice requires tools to be specified.", param="tool_choice")
        return ToolPlan()
    choice = tool_choice if tool_choice is not None else "auto"
    if choice == "none":
        return ToolPlan(mode="off")
    if choice == "auto":
        return ToolPlan(mode="auto", functions=functions, described=functions)
    if choice == "required":
        return ToolPlan(mode="forced", functions=functions, described=functions)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        chosen = [fn for fn in functions if fn["name"] == name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names a function that is not in tools: {name!r}.", param="tool_choice"
            )
        return ToolPlan(mode="forced", functions=chosen, described=functions)
    raise InvalidRequest(f"Invalid tool_choice: {choice!r}.", param="tool_choice")


def response_schema(response_format: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The JSON schema ``response_format`` asks for (None for plain text), and the param that holds it."""
    if not response_format or response_format.get("type", "text") == "text":
        return None, "response_format"
    kind = response_format["type"]
    if kind == "json_object":
        return {"type": "object"}, "response_format"
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema") or {"type": "object"}, "response_format.json_schema.schema"
    raise InvalidRequest(
        f"Invalid response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
    )


def content_text(content: Any) -> str:
    """Message content (a string or a list of parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, dict):
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        else:
            texts.append(str(part))
    return "".join(texts)


def _user_text(content: Any, media_marker: str | None, index: int) -> str:
    """A user message's text, each image part written as ``media_marker`` (the projector's place for
    it); an image for a model without one (``media_marker`` None) is refused, never dropped."""
    if not isinstance(content, list):
        return content_text(content)
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "image_url":
            if media_marker is None:
                raise InvalidRequest(
                    "This model does not accept images (image_url content): it is a text-only model.",
                    param=f"messages[{index}].content[{j}]",
                )
            texts.append(media_marker)
        else:
            texts.append(content_text([part]))
    return "".join(texts)


def _tools_prompt(functions: list[dict[str, Any]]) -> str:
    lines = [
        "You can call the following functions. To call one, reply with nothing but:",
        '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>',
        "Otherwise answer normally. Functions:",
    ]
    for fn in functions:
        lines.append(
            json.dumps(
                {
                    "name": fn["name"],
                    "description": fn.get("description", ""),
                    "parameters": fn.get("parameters", {}),
                },
                ensure_ascii=False,
            )
        )
    return "\n".join(lines)


def normalize_messages(
    messages: list[dict[str, Any]], plan: ToolPlan, media_marker: str | None = None
) -> list[dict[str, str]]:
    """OpenAI chat messages -> plain {role, content} turns any chat template can render. Image parts
    (user messages only) become ``media_marker``, in order; without one they are refused."""
    out: list[dict[str, str]] = []
    system_parts: list[str] = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "user":
            text = _user_text(msg.get("content"), media_marker, i)
        else:
            text = content_text(msg.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
            continue
        if role == "assistant":
            calls = msg.get("tool_calls") or []
            for call in calls:
                fn = call.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = fn.get("arguments")
                payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
                text = (text + "\n" if text else "") + TOOL_CALL_OPEN + payload + TOOL_CALL_CLOSE
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        else:
            out.append({"role": "user", "content": text})
    if plan.described:
        system_parts.append(_tools_prompt(plan.described))
    system = "\n\n".join(p for p in system_parts if p)
    if system:
        out.insert(0, {"role": "system", "content": system})
    return out


class ChatFormatter:
    """Renders chat turns with a model's Jinja2 chat template."""

    def __init__(self, template: str, eos_token: str, bos_token: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True
        )
        self.eos_token = eos_token

    @classmethod
    def from_llama(cls, llama: Llama) -> ChatFormatter:
        template: str = llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE

        def token_text(token_id: int) -> str:
            if token_id < 0:
                return ""
            return str(llama._model.token_get_text(token_id))

        return cls(template, token_text(llama.token_eos()), token_text(llama.token_bos()))

    def render(
        self, messages: list[dict[str, Any]], plan: ToolPlan, media_marker: str | None = None
    ) -> Prompt:
        turns = normalize_messages(messages, plan, media_marker)
        result = self._formatter(messages=turns)  # type: ignore[arg-type]
        stop = [s for s in ([result.stop] if isinstance(result.stop, str) else result.stop or []) if s]
        return Prompt(text=result.prompt, stop=stop, added_special=bool(result.added_special))
