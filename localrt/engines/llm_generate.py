"""The token loop of a generation, in the model's worker thread: text pieces, stops, and preemption.

The loop is our own, over llama-cpp-python's ``Llama.generate`` (which samples and keeps the KV cache's
common prefix), rather than ``create_completion``: that one detokenizes the whole reply again at every
token to find stop sequences and split UTF-8, so its cost per token grows with the reply. Here each
token is turned into text once, through an incremental UTF-8 decoder, and stop sequences are matched
against the new piece and a short held tail (:class:`~localrt.text.stops.StopMatcher`). Sampling
defaults are ``create_completion``'s (top_k 40, min_p 0.05, no repeat penalty), so the same request
gives the same tokens either way. The job's stop flag is checked before every token.

Preemption: between tokens, when a job of a strictly higher priority waits for the model (a voice turn
while a long HTTP chat generates), the loop saves the context's state (:mod:`.llm_state`) and the
sampler, lets the waiting jobs run here, nested (``JobControl.yield_now``), then puts both back and goes
on. ``Llama.generate`` is suspended at the token it just handed out, whose decoding is still pending,
so going on costs nothing more than not stopping would have: the reply is the one an uninterrupted run
gives (same sampler, same random state, same penalties). The decoder and stop matcher live here, so the
text continues where it left off. A generation under a grammar is never preempted.

Holding: a realtime response holds its job while the first clause of the reply is synthesized
(:meth:`~localrt.engines.scheduler.JobControl.hold`); the loop then waits before its next token, at most
:data:`MAX_HOLD_S`, and not while another job waits for the model.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localrt.engines import chat_format, llm_state
from localrt.engines.scheduler import JobControl
from localrt.engines.types import SamplingParams, TextDelta
from localrt.text.stops import StopMatcher

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar


@dataclass
class Generated:
    """How a generation ended."""

    text: str
    finish_reason: str  # "stop" | "length" | "tool_calls"
    tokens: int  # completion tokens, the end-of-generation token included


Pieces = Generator[str, None, Generated]
# The longest a held generation waits for its release (a first clause's synthesis takes 20-300 ms on a
# CPU; its audio then plays for a second or more, while the rest of the reply is generated).
MAX_HOLD_S = 1.0


def generate_text(
    llama: Llama,
    control: JobControl,
    tokens: list[int],
    params: SamplingParams,
    stop: list[str],
    grammar: LlamaGrammar | None = None,
    *,
    on_resume: Callable[[], None] | None = None,
    before_token: Callable[[], None] | None = None,
) -> Pieces:
    """Yield text pieces as llama.cpp makes them; return how it ended. See the module docstring.

    ``on_resume`` runs after a preemption, before this job's context is put back (to keep what the
    jobs that ran meanwhile left in the context); ``before_token`` before each evaluation (the prompt's
    and then each token's)."""
    import llama_cpp

    vocab = llama._model.vocab
    budget = llama.n_ctx() - len(tokens)
    max_tokens = min(params.max_tokens, budget) if params.max_tokens else budget
    # Without a seed, the next one follows from the last, as in create_completion: replies vary from
    # call to call, and a server that gets the same requests in the same order answers the same way.
    llama.set_seed(params.seed if params.seed is not None else random.Random(llama._seed).randint(0, 2**32))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    matcher = StopMatcher(stop)
    parts: list[str] = []
    finish = "length"

    def start(prompt: list[int]) -> Generator[int, Sequence[int] | None, None]:
        return llama.generate(
            prompt,
            top_k=40,
            top_p=params.top_p,
            min_p=0.05,
            temp=params.temperature,
            repeat_penalty=1.0,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )

    ids: list[int] = []
    token_stream = start(tokens)
    try:
        while len(ids) < max_tokens and not control.is_set():
            if control.held:  # the reply's first speech is being synthesized: leave it the CPU
                control.wait_released(MAX_HOLD_S)
            if (
                ids
                and grammar is None
                and control.should_yield()
                and not _yield_slot(llama, control, on_resume)
            ):
                token_stream.close()  # (never seen) the context is lost: evaluate it all again
                token_stream = start(tokens + ids)
            if control.is_set():
                break
            if before_token is not None:
                before_token()  # the threads for the next evaluation (the prompt's, then each token's)
            token = next(token_stream)
            ids.append(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            piece = matcher.feed(decoder.decode(llama.detokenize([token])))
            if piece:
                parts.append(piece)
                yield piece
            if matcher.stopped:
                finish = "stop"
                break
        if control.is_set():
            finish = "stop"
        else:
            tail = matcher.feed(decoder.decode(b"", final=True)) + matcher.flush()
            if tail:
                parts.append(tail)
                yield tail
    finally:
        token_stream.close()
    return Generated("".join(parts), finish, len(ids))


def _yield_slot(llama: Llama, control: JobControl, on_resume: Callable[[], None] | None) -> bool:
    """Let the waiting higher-priority jobs run (they use the context), then put this job's back;
    False if llama.cpp refused the saved state (the context is empty then)."""
    state = llm_state.save(llama)
    sampler = llama._sampler
    try:
        control.yield_now()
    finally:
        if on_resume is not None:
            on_resume()
        llama._sampler = sampler
        restored = llm_state.restore(llama, state)
    return restored


# --- pieces as events -----------------------------------------------------------------------------------
def as_text_deltas(pieces: Pieces) -> Generator[TextDelta, None, Generated]:
    """Re-yield text pieces as TextDelta events; return how the generation ended."""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as end:
            result: Generated = end.value
            return result
        yield TextDelta(piece)


def run_to_end(pieces: Pieces) -> Generated:
    """Consume ``pieces`` silently; return how the generation ended."""
    while True:
        try:
            next(pieces)
        except StopIteration as end:
            result: Generated = end.value
            return result


class ToolCallWatcher:
    """Holds back the start of a free reply until it is clear whether it opens a tool call."""

    _OPENERS = (chat_format.TOOL_CALL_OPEN.strip(), '{"name"')

    def __init__(self) -> None:
        self.is_call = False

    def watch(self, pieces: Pieces) -> Pieces:
        held = ""
        decided = False
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                if held and not self.is_call:
                    yield held
                result: Generated = end.value
                return result
            if decided:
                yield piece
                continue
            held += piece
            start = held.lstrip()
            if not start:
                continue
            if any(start.startswith(o) for o in self._OPENERS):
                self.is_call = True
                pieces.close()  # stop generating: the call is redone under the grammar
                return Generated("", "tool_calls", 0)
            if any(o.startswith(start) for o in self._OPENERS):
                continue  # still ambiguous
            decided = True
            yield held
            held = ""
