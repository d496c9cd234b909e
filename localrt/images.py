"""Image inputs: checking an image URL a client sent, and decoding the data URLs a local model reads.

Images reach a chat model as OpenAI ``image_url`` content parts (``/v1/chat/completions``) or realtime
``input_image`` content (turned into the same parts). What a model accepts is its
:class:`~localrt.engines.interfaces.ChatModel` flags, read through :func:`support_of`:

- ``vision`` False (a text-only model): any image is refused, naming the part (``invalid_value``);
  nothing is ever silently dropped.
- ``vision`` True, ``image_urls`` False (a local GGUF with its projector, ``--llm-mmproj``): data URLs
  only. localrt never fetches a URL itself, so an ``http(s)://`` image is refused (``invalid_image_url``).
- ``vision`` and ``image_urls`` True (a remote OpenAI-compatible engine): data URLs are checked the same
  way; http(s) URLs are passed on untouched (the upstream fetches them).

A data URL must be ``data:image/{png,jpeg,webp,gif};base64,...``, at most :data:`MAX_IMAGE_BYTES` once
decoded (decided from its length before anything is decoded), valid base64 (strict: no whitespace), and
its bytes must start like the media type it declares. Decoding a large one runs in a worker thread.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from localrt.errors import InvalidRequest

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # one image, decoded
MAX_URL_CHARS = 8192  # an http(s) image URL passed on to a remote engine
MAX_LOCAL_IMAGES = 64  # images in one prompt of a local model (each is decoded and encoded by the projector)
INLINE_MAX_CHARS = 256 * 1024  # base64 characters decoded on the event loop; more go to a thread

# media type -> how the bytes of such an image start
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8 (checked below)
}
MEDIA_TYPES = tuple(_SIGNATURES)
_DATA_URL = re.compile(r"data:([^;,]{0,100})((?:;[^;,]{0,100}){0,8}),", re.IGNORECASE)


@dataclass(frozen=True)
class ImageSupport:
    """What a chat model accepts (see the module docstring)."""

    model_id: str
    vision: bool
    image_urls: bool


def support_of(model: Any) -> ImageSupport:
    """A chat model's image flags; a model that declares none is text-only."""
    vision = bool(getattr(model, "vision", False))
    return ImageSupport(
        model_id=str(getattr(model, "id", "")),
        vision=vision,
        image_urls=vision and bool(getattr(model, "image_urls", False)),
    )


def not_accepted(support: ImageSupport, param: str, what: str = "image_url") -> InvalidRequest:
    return InvalidRequest(
        f"The model '{support.model_id}' does not accept images ({what} content): it is a text-only "
        "model. Use a vision model (a local GGUF with --llm-mmproj, or a remote vision model with "
        "--llm-base-url), or send text only.",
        param=param,
    )


def check_url(url: str, param: str, support: ImageSupport) -> bool:
    """The checks that need no decoding; True if ``url`` is a data URL (then :func:`decode_data_url`
    it to finish the check). Raises InvalidRequest naming ``param``."""
    if not support.vision:
        raise not_accepted(support, param)
    head = url[:16].lower()
    if head.startswith("data:"):
        _split_data_url(url, param)
        return True
    if head.startswith(("http://", "https://")):
        if not support.image_urls:
            raise InvalidRequest(
                f"The model '{support.model_id}' reads images from data URLs only "
                "(data:image/png;base64,...): localrt does not fetch image URLs.",
                param=param,
                code="invalid_image_url",
            )
        if len(url) > MAX_URL_CHARS:
            raise InvalidRequest(
                f"The image URL is {len(url)} characters long, over the limit of {MAX_URL_CHARS}.",
                param=param,
                code="invalid_image_url",
            )
        return False
    raise InvalidRequest(
        "Invalid image URL: expected a data URL (data:image/png;base64,...) or an http(s) URL.",
        param=param,
        code="invalid_image_url",
    )


def _split_data_url(url: str, param: str) -> tuple[str, int]:
    """(media type, offset of the base64 payload), after the checks that need no decoding."""
    match = _DATA_URL.match(url)
    if match is None or "base64" not in [p.strip().lower() for p in match.group(2).split(";")]:
        raise InvalidRequest(
            "Invalid image data URL: expected data:<media type>;base64,<data>.",
            param=param,
            code="invalid_image_url",
        )
    media = match.group(1).strip().lower()
    if media not in _SIGNATURES:
        shown = media[:40] or "none"
        raise InvalidRequest(
            f"Unsupported image type '{shown}': use one of " + ", ".join(MEDIA_TYPES) + ".",
            param=param,
            code="invalid_image_format",
        )
    start = match.end()
    payload = len(url) - start
    decoded = payload // 4 * 3  # at least this many bytes, whatever the padding
    if decoded - 2 > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"The image is about {decoded} bytes, over this server's limit of {MAX_IMAGE_BYTES} bytes.",
            param=param,
            code="image_too_large",
        )
    return media, start


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of an image data URL, fully checked (see the module docstring). Blocking: about 1 ms
    per 100 KB; the async callers hand large ones to a thread (:func:`check_image`)."""
    media, start = _split_data_url(url, param)
    try:
        data = binascii.a2b_base64(url[start:], strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "The image data URL is not valid base64.", param=param, code="image_parse_error"
        ) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"The image is {len(data)} bytes, over this server's limit of {MAX_IMAGE_BYTES} bytes.",
            param=param,
            code="image_too_large",
        )
    if not data.startswith(_SIGNATURES[media]) or (media == "image/webp" and data[8:12] != b"WEBP"):
        raise InvalidRequest(
            f"The image data is not a valid {media.removeprefix('image/')} image.",
            param=param,
            code="image_parse_error",
        )
    return data


async def check_image(url: str | None, param: str, support: ImageSupport) -> None:
    """Every check of one image URL (a large data URL is decoded in a worker thread)."""
    if not support.vision:
        raise not_accepted(support, param)
    if not url:
        raise InvalidRequest("The image has no URL (image_url).", param=param, code="invalid_image_url")
    if not check_url(url, param, support):
        return
    if len(url) > INLINE_MAX_CHARS:
        await anyio.to_thread.run_sync(decode_data_url, url, param, abandon_on_cancel=True)
    else:
        decode_data_url(url, param)


# --- image parts in chat messages ---------------------------------------------------------------------
def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(message index, part index, part) of every ``image_url`` part, in order."""
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    yield i, j, part


def part_url(part: dict[str, Any]) -> str:
    """The URL of an ``image_url`` part (``{"url": ...}``, or the bare string some clients send)."""
    image = part.get("image_url")
    if isinstance(image, dict):
        return str(image.get("url") or "")
    return str(image or "")
