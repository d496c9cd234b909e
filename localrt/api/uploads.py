"""Multipart audio uploads: read within ``max_upload_bytes``, decoded within ``max_audio_seconds``.

Every byte of an upload is the client's: the body is counted as it arrives (413 past the limit, at once
when ``Content-Length`` says so), the file is decoded frame by frame in a worker thread and decoding
stops as soon as the decoded duration passes the cap, whatever the container claims (see
:func:`localrt.audio.codecs.decode`). A client cut off mid-upload costs one INFO line.
"""

from __future__ import annotations

import functools
import logging
import threading

import anyio
import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from localrt.api.common import ClientDisconnected
from localrt.audio import codecs
from localrt.errors import InvalidRequest, MissingParameter, PayloadTooLarge

logger = logging.getLogger(__name__)

_FORM_SLACK = 1024 * 1024  # multipart boundaries and the small fields around the file


def _too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    got = f" (got {size} bytes)" if size is not None else ""
    return PayloadTooLarge(
        f"The file is larger than the maximum of {limit / (1024 * 1024):g} MB{got}.", param="file"
    )


async def read_form(request: Request, max_bytes: int) -> FormData:
    """The multipart form, refusing bodies over the limit with 413 (after draining what was sent,
    so the client can read the answer instead of seeing its upload cut off).

    A client that goes away mid-upload is not an error of ours: one INFO line, no traceback, and
    ``ClientDisconnected`` (answered by nobody) instead of Starlette's ``ClientDisconnect``.
    """
    declared = request.headers.get("content-length")
    limit = max_bytes + _FORM_SLACK
    received = 0
    receive = request.receive

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _too_large(max_bytes)
        return message

    try:
        if declared is not None and declared.isdigit() and int(declared) > limit:
            async for chunk in request.stream():
                received += len(chunk)
                if received > 4 * limit:
                    break
            raise _too_large(max_bytes)
        return await Request(request.scope, limited).form(max_files=1, max_fields=64)
    except HTTPException as exc:  # Starlette's rendering of a malformed multipart body
        raise InvalidRequest(f"Malformed multipart body: {exc.detail}", param="file") from exc
    except ClientDisconnect:
        logger.info(
            "%s %s: the client went away mid-upload (%d bytes received)",
            request.method,
            request.url.path,
            received,
        )
        raise ClientDisconnected from None


async def read_file(form: FormData, max_bytes: int) -> bytes:
    """The bytes of the form's ``file`` part (400 when missing, empty or a text field)."""
    upload = form.get("file")
    if upload is None:
        raise MissingParameter("Missing required parameter: 'file'.", param="file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("'file' must be an uploaded file, not a text field.", param="file")
    data = await upload.read()
    if len(data) > max_bytes:
        raise _too_large(max_bytes, len(data))
    if not data:
        raise InvalidRequest("The audio file is empty.", param="file")
    return data


async def decode(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """``codecs.decode`` in a worker thread. Cancelling the wait (the client left, the server is
    shutting down) returns at once and stops the decoder at its next frame."""
    stop = threading.Event()
    job = functools.partial(codecs.decode, data, sample_rate, max_duration=max_seconds, stop=stop)
    try:
        return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
    finally:
        stop.set()
