"""What a generation job does before its first token, in the engine's worker thread: prompt and grammars.

Nothing here runs on the event loop: rendering a chat template over a long history, tokenizing it and
converting JSON schemas all cost time in proportion to what a client sent (tokenizing 16 MB of text
takes the better part of a minute), so they belong to the job, and the job runs in the model's worker.

- Context: a prompt that cannot fit is ``ContextLengthExceeded``, decided from its length in characters
  alone when that already proves it (no token stands for more than ``max_token_chars``), so
  an oversized request costs no tokenizing at all.
- History (``truncate``, the realtime conversation's truncation "auto"): when the conversation no longer
  fits, the system prompt is kept and the oldest whole turns are dropped so that the rest fits with room
  for the reply. One cut: messages are tokenized one at a time from the newest back to where the budget
  runs out (older ones are never tokenized), the cut is moved forward to the next user turn, and the
  prompt is rendered and checked again, once; a second, exact cut covers what the estimate missed.
- Grammars: ``response_format`` and the callable tools' schemas, through :mod:`.grammar` (checked,
  converted, accepted by llama.cpp) before generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localrt import images
from localrt.engines import chat_format, grammar
from localrt.errors import ContextLengthExceeded, InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

Stopped = Callable[[], bool]
_SYSTEM_ROLES = ("system", "developer")


class Cancelled(Exception):
    """The job was stopped while its prompt was being prepared."""


@dataclass
class ChatPrompt:
    tokens: list[int]
    stop: list[str]
    grammar: LlamaGrammar | None = None  # response_format's
    call_grammar: LlamaGrammar | None = None  # the tool call's
    dropped: int = 0  # history messages left out to fit the context
    # A prompt with images (a model with a projector): ``tokens`` stays empty, the text (one media
    # marker per image) and the decoded images are evaluated by :mod:`.llm_vision` instead.
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    add_special: bool = True


def keep_from(roles: Sequence[str], cost: Callable[[int], int], budget: int) -> int:
    """Index of the first history message to keep so that the rest costs at most ``budget`` tokens.

    ``cost(i)`` is asked from the newest message back, only until the budget runs out. The kept part
    starts at a user message (whole turns are dropped); when even the last turn is over the budget it
    is kept whole anyway (whoever renders it finds out whether it fits).
    """
    used, first = 0, len(roles)
    while first > 0:
        c = cost(first - 1)
        if used + c > budget:
            break
        used += c
        first -= 1
    if first == 0:
        return 0
    start = next((j for j in range(first, len(roles)) if roles[j] == "user"), None)
    if start is not None:
        return start
    return max((j for j in range(first) if roles[j] == "user"), default=first)


def _longest_token(llama: Llama) -> int:
    import llama_cpp

    vocab = llama._model.vocab
    lengths = (len(llama_cpp.llama_vocab_get_text(vocab, i) or b"") for i in range(llama.n_vocab()))
    return max(max(lengths, default=1), 1)


class PromptBuilder:
    """Prompts for one model: render, tokenize, fit, grammars. Use only in the model's worker thread."""

    def __init__(
        self,
        llama: Llama,
        formatter: chat_format.ChatFormatter,
        *,
        max_token_chars: int | None = None,
        media_marker: str | None = None,
    ) -> None:
        """Blocking (a pass over the vocabulary): build it where the model is loaded.

        ``max_token_chars`` bounds the characters of text one token stands for, so that characters /
        it <= tokens; by default the longest token text, doubled for normalizers that shrink text.
        ``media_marker``: the projector's image marker (a model with ``--llm-mmproj``); None: images
        are refused.
        """
        self.llama = llama
        self.formatter = formatter
        self.media_marker = media_marker
        self.n_ctx: int = llama.n_ctx()
        self.max_token_chars = max_token_chars or 2 * _longest_token(llama)
        self._overhead: int | None = None

    # -- tokens -------------------------------------------------------------------------------------------
    def surely_too_long(self, chars: int) -> bool:
        """Whether text of ``chars`` characters is more than the context holds, without tokenizing it."""
        return chars // self.max_token_chars >= self.n_ctx

    def tokenize(self, text: str, *, add_bos: bool, param: str) -> list[int]:
        """``text`` as tokens; ContextLengthExceeded (naming ``param``) if they do not fit."""
        if self.surely_too_long(len(text)):
            raise self.too_long(len(text) // self.max_token_chars, param, at_least=True)
        tokens: list[int] = self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if len(tokens) >= self.n_ctx:
            raise self.too_long(len(tokens), param)
        return tokens

    def count(self, text: str) -> int:
        """Tokens of ``text`` (more than the context, without tokenizing, when that is already sure)."""
        if self.surely_too_long(len(text)):
            return self.n_ctx + 1
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def too_long(self, n: int, param: str, *, at_least: bool = False) -> ContextLengthExceeded:
        what = "messages" if param == "messages" else "prompt"
        return ContextLengthExceeded(
            f"This model's maximum context length is {self.n_ctx} tokens. However, your {what} "
            f"resulted in {'at least ' if at_least else ''}{n} tokens. Please reduce the length of the "
            f"{what}.",
            param=param,
        )

    # -- completions --------------------------------------------------------------------------------------
    def completion(self, prompt: str | list[int]) -> tuple[list[int], str]:
        """The tokens and text of a completions prompt (text, or token ids checked against the vocabulary)."""
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_bos=True, param="prompt"), prompt
        n_vocab = self.llama.n_vocab()
        if not prompt:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        if min(prompt) < 0 or max(prompt) >= n_vocab:
            raise InvalidRequest(
                f"Invalid token id in 'prompt': token ids must be between 0 and {n_vocab - 1}.",
                param="prompt",
            )
        if len(prompt) >= self.n_ctx:
            raise self.too_long(len(prompt), "prompt")
        text = self.llama.detokenize(prompt).decode("utf-8", errors="replace")
        return list(prompt), text

    # -- chat ---------------------------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        plan: chat_format.ToolPlan,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
        truncate: bool,
        stopped: Stopped,
    ) -> ChatPrompt:
        """The prompt of a chat job; raises Cancelled if ``stopped`` while it works."""
        result = ChatPrompt(tokens=[], stop=[])
        if plan.mode != "off":
            param = self._check_tools(tools or [], plan)
            text = grammar.schema_grammar(plan.call_schema(), param)
            result.call_grammar = grammar.load_grammar(self.llama._model.vocab, text, param)
        else:
            schema, param = chat_format.response_schema(response_format)
            if schema is not None:
                text = grammar.schema_grammar(schema, param)
                result.grammar = grammar.load_grammar(self.llama._model.vocab, text, param)
        if next(images.image_parts(messages), None) is not None:
            self._with_images(messages, plan, result)
            return result
        if truncate:
            prompt, result.tokens, result.dropped = self._fit(messages, plan, max_tokens, stopped)
        else:
            prompt = self.formatter.render(messages, plan)
            result.tokens = self.tokenize(prompt.text, add_bos=not prompt.added_special, param="messages")
        result.stop = prompt.stop
        return result

    def _with_images(
        self, messages: list[dict[str, Any]], plan: chat_format.ToolPlan, result: ChatPrompt
    ) -> None:
        """The text and images of a prompt with images (no truncation: see :mod:`.llm_vision`)."""
        prompt = self.formatter.render(messages, plan, self.media_marker)  # refuses them without one
        if self.surely_too_long(len(prompt.text)):
            raise self.too_long(len(prompt.text) // self.max_token_chars, "messages", at_least=True)
        for n, (i, j, part) in enumerate(images.image_parts(messages)):
            if n == images.MAX_LOCAL_IMAGES:
                raise InvalidRequest(
                    f"The messages hold more than {images.MAX_LOCAL_IMAGES} images, this model's limit.",
                    param=f"messages[{i}].content[{j}]",
                )
            result.images.append(images.decode_data_url(images.part_url(part), f"messages[{i}].content[{j}]"))
        result.text, result.stop, result.add_special = prompt.text, prompt.stop, not prompt.added_special

    def _check_tools(self, tools: list[dict[str, Any]], plan: chat_format.ToolPlan) -> str:
        """Check each callable tool's schema; the param naming the call grammar as a whole."""
        params = []
        for i, tool in enumerate(tools):
            fn = tool.get("function")
            if isinstance(fn, dict) and any(fn is f for f in plan.functions):
                param = f"tools[{i}].function.parameters"
                grammar.guard(chat_format.parameters_schema(fn.get("parameters")), param)
                params.append(param)
        return params[0] if len(params) == 1 else "tools"

    def _fit(
        self,
        messages: list[dict[str, Any]],
        plan: chat_format.ToolPlan,
        max_tokens: int | None,
        stopped: Stopped,
    ) -> tuple[chat_format.Prompt, list[int], int]:
        """Render the conversation, dropping its oldest whole turns if it does not fit (one cut)."""
        system = [m for m in messages if m.get("role") in _SYSTEM_ROLES]
        history = [m for m in messages if m.get("role") not in _SYSTEM_ROLES]
        roles = [str(m.get("role")) for m in history]
        costs: dict[int, int] = {}
        overhead = self._turn_overhead()

        def cost(i: int) -> int:
            if stopped():
                raise Cancelled
            if i not in costs:
                turn = chat_format.normalize_messages([history[i]], chat_format.ToolPlan())
                costs[i] = self.count(turn[0]["content"]) + overhead if turn else 0
            return costs[i]

        fixed = self.count(self._render(system, plan).text)
        if fixed >= self.n_ctx:  # the system prompt (and tools) alone
            raise self.too_long(fixed, "messages", at_least=fixed > self.n_ctx)
        if keep_from(roles, cost, self.n_ctx - 1 - fixed) == 0:
            prompt = self._render(messages, plan)
            tokens = self._tokens(prompt)
            if tokens is not None and len(tokens) < self.n_ctx:
                return prompt, tokens, 0
        reserve = min(max_tokens or self.n_ctx // 4, self.n_ctx // 2)
        target = self.n_ctx - reserve
        first = keep_from(roles, cost, target - fixed)
        prompt = self._render(system + history[first:], plan)
        tokens = self._tokens(prompt)
        if tokens is not None and len(tokens) > target:  # the estimate was short: drop what it missed, once
            excess, dropped, nxt = len(tokens) - target, 0, first
            while nxt < len(history) - 1 and dropped < excess:
                dropped += cost(nxt)
                nxt += 1
            nxt = next((j for j in range(nxt, len(history)) if roles[j] == "user"), first)
            if nxt != first:
                first = nxt
                prompt = self._render(system + history[first:], plan)
                tokens = self._tokens(prompt)
        if tokens is None:
            raise self.too_long(len(prompt.text) // self.max_token_chars, "messages", at_least=True)
        if len(tokens) >= self.n_ctx:
            raise self.too_long(len(tokens), "messages")
        return prompt, tokens, first

    def _render(self, messages: list[dict[str, Any]], plan: chat_format.ToolPlan) -> chat_format.Prompt:
        return self.formatter.render(messages, plan)

    def _tokens(self, prompt: chat_format.Prompt) -> list[int] | None:
        """The prompt's tokens, or None if it is surely longer than the context (not tokenized then)."""
        if self.surely_too_long(len(prompt.text)):
            return None
        tokens: list[int] = self.llama.tokenize(
            prompt.text.encode("utf-8"), add_bos=not prompt.added_special, special=True
        )
        return tokens

    def _turn_overhead(self) -> int:
        """About how many tokens the template adds around one message (measured once)."""
        if self._overhead is None:
            one = [{"role": "user", "content": "x"}]
            three = [*one, {"role": "assistant", "content": "x"}, *one]
            plan = chat_format.ToolPlan()
            extra = self.count(self._render(three, plan).text) - self.count(self._render(one, plan).text)
            self._overhead = max(0, -(-(extra - 2 * self.count("x")) // 2))
        return self._overhead
