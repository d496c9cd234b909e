"""Images for a local GGUF chat model: its multimodal projector (``--llm-mmproj``) through libmtmd.

**Tested with a stand-in only**: no vision GGUF ships with localrt. The tests run this path end to end
over the embedded text model and a tiny random-weight LLaVA-style projector (``tests/tiny_mmproj.py``):
libmtmd loads it, a prompt with images is tokenized, encoded and evaluated, generation (text, tool
calls, realtime turns) goes on after it, and different images give different replies. That proves the
plumbing, not how well any real vision model answers.

The projector is loaded by llama-cpp-python's :class:`~llama_cpp.llama_chat_format.MTMDChatHandler`
(the generic handler: it uses the GGUF's own chat template and llama.cpp's libmtmd, which knows each
projector's image tokens), but the prompt is not handed to its ``__call__``, which would generate with
``create_completion`` and its own chat format: our prompt path keeps its own template rendering, tool
calling, grammars and generation loop. What differs for a prompt with images:

- The chat template is rendered as for text, each image part written as libmtmd's media marker
  (:func:`~localrt.engines.chat_format.normalize_messages`); a marker typed by the client is refused.
- The handler's mtmd context tokenizes text and images together (``mtmd_tokenize``), and the chunks are
  evaluated into the context from position 0 (text with ``Llama.eval``, images with
  ``mtmd_helper_eval_chunk_single``), as the handler does.
- The prompt's "tokens" are then the context's ids, with :data:`IMAGE_TOKEN` (-1, no token) at image
  positions: generation (``Llama.generate``) finds the whole prompt already evaluated and only decodes
  its last text token again; no later prompt can share a prefix past an image (no real token is -1),
  and re-evaluating one by mistake fails in llama.cpp rather than reading a wrong image.
- Such a job neither reuses nor keeps a session's saved context (:mod:`.llm_state`): images are
  evaluated again at every turn, and realtime history truncation is not applied to them (a
  conversation that no longer fits fails with ``context_length_exceeded``).

Model families: whatever libmtmd supports with a projector GGUF from the same conversion as the
model, e.g. Gemma 3, Qwen2-VL / Qwen2.5-VL, SmolVLM, LLaVA 1.5 / 1.6, MiniCPM-V 2.6, Pixtral; the GGUF must
carry a chat template (the embedded ChatML fallback does not know a model's image conventions).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localrt.engines.llm_prompt import Cancelled
from localrt.errors import ContextLengthExceeded, InvalidRequest, ServerError

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

IMAGE_TOKEN = -1  # the id kept at an image's positions in the context's token list


class VisionEncoder:
    """A projector bound to one ``Llama``. Construct where the model is loaded (blocking); use only in
    the model's worker thread."""

    def __init__(self, llama: Llama, mmproj: Path, *, use_gpu: bool) -> None:
        import llama_cpp.mtmd_cpp as mtmd
        from llama_cpp._logger import llama_log_callback
        from llama_cpp.llama_chat_format import MTMDChatHandler

        self._mtmd: Any = mtmd
        # libmtmd logs every prompt and image at info level: through llama-cpp-python's callback, which
        # prints errors only (the Llama is loaded with verbose=False)
        mtmd.mtmd_log_set(llama_log_callback, None)
        mtmd.mtmd_helper_log_set(llama_log_callback, None)
        try:
            self.handler: Any = MTMDChatHandler(clip_model_path=str(mmproj), verbose=False, use_gpu=use_gpu)
            self.handler._init_mtmd_context(llama)  # freed with the Llama (its exit stack)
        except ValueError as exc:
            raise ValueError(f"llm_mmproj {str(mmproj)!r} cannot be used with this model: {exc}") from exc
        self.marker: str = mtmd.mtmd_default_marker().decode("utf-8")

    def evaluate(
        self,
        llama: Llama,
        text: str,
        images: list[bytes],
        *,
        add_special: bool,
        stopped: Callable[[], bool],
    ) -> list[int]:
        """Evaluate ``text`` (holding one marker per image) and ``images`` into the context, from its
        start; return the prompt's token list (see the module docstring). Raises ContextLengthExceeded,
        InvalidRequest for an image the projector cannot read, Cancelled if ``stopped``."""
        import llama_cpp

        mtmd = self._mtmd
        if text.count(self.marker) != len(images):
            raise InvalidRequest(
                f"The messages contain the text {self.marker!r}, which this model reserves for images.",
                param="messages",
            )
        ctx = self.handler.mtmd_ctx
        bitmaps: list[Any] = []
        chunks = None
        try:
            for i, data in enumerate(images):
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(data), False)
                if not bitmap:
                    raise InvalidRequest(
                        f"Image {i + 1} of the messages could not be decoded.", param="messages"
                    )
                bitmaps.append(bitmap)
            encoded = text.encode("utf-8")
            input_text = mtmd.mtmd_input_text()
            input_text.text = encoded
            input_text.text_len = len(encoded)
            input_text.add_special = add_special
            input_text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            if not chunks:
                raise ServerError("libmtmd could not allocate the prompt's chunks.")
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(input_text), array, len(bitmaps))
            if rc != 0:
                raise InvalidRequest(
                    f"The images could not be tokenized (libmtmd error {rc}).", param="messages"
                )
            parts = [
                mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))
            ]
            total = sum(int(mtmd.mtmd_input_chunk_get_n_tokens(c)) for c in parts if c)
            n_ctx = llama.n_ctx()
            if total >= n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens. However, your messages "
                    f"resulted in {total} tokens (images included). Please reduce the length of the "
                    "messages or the number of images.",
                    param="messages",
                )
            llama.reset()  # type: ignore[no-untyped-call]
            llama._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
            for chunk in parts:
                if stopped():
                    raise Cancelled
                if chunk:
                    self._eval_chunk(llama, chunk, llama_cpp)
            return [int(t) for t in llama.input_ids[: llama.n_tokens]]
        finally:
            if chunks:
                mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _eval_chunk(self, llama: Llama, chunk: Any, llama_cpp: Any) -> None:
        mtmd = self._mtmd
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            if ptr and n.value:
                llama.eval([int(ptr[j]) for j in range(n.value)])
            return
        start = llama.n_tokens
        n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self.handler.mtmd_ctx,
            llama._ctx.ctx,
            chunk,
            llama_cpp.llama_pos(start),
            llama_cpp.llama_seq_id(0),
            llama.n_batch,
            False,  # logits of the last position: not needed, the prompt ends with text
            ctypes.byref(n_past),
        )
        if rc != 0:
            raise ServerError(f"The image could not be evaluated (libmtmd error {rc}).")
        llama.n_tokens = n_past.value
        llama.input_ids[start : llama.n_tokens] = IMAGE_TOKEN
