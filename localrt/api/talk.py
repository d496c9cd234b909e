"""``GET /``: the browser talk page, and ``GET /web/<file>``: its scripts and style sheet.

The page (``localrt/web/index.html``, ``talk.js``, ``mic.js``, ``player.js``, ``capture-worklet.js``,
``talk.css``) is plain HTML and JavaScript modules shipped as package data: no build step and nothing
fetched from elsewhere, so it works offline. It opens ``/v1/realtime`` on the same host (``wss://`` when
served over ``https://``) and sends the API key, typed into the page, as the
``openai-insecure-api-key.<key>`` subprotocol.

These files hold no secret, so they are served without the key (:func:`is_public`): a browser cannot
send a bearer header when it navigates, and the realtime socket checks the key itself. Only the names in
:data:`FILES` are served; anything else under ``/web/`` is a 404.
"""

from __future__ import annotations

import functools
import importlib.resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

PAGE_PATH = "/"
STATIC_PREFIX = "/web/"
FILES = {
    "talk.js": "text/javascript; charset=utf-8",
    "mic.js": "text/javascript; charset=utf-8",
    "player.js": "text/javascript; charset=utf-8",
    "capture-worklet.js": "text/javascript; charset=utf-8",
    "talk.css": "text/css; charset=utf-8",
}


def is_public(path: str) -> bool:
    """The talk page and its static files: served without the API key (they carry no secret)."""
    return path == PAGE_PATH or (path.startswith(STATIC_PREFIX) and path[len(STATIC_PREFIX) :] in FILES)


@functools.cache
def _read(name: str) -> bytes:
    return importlib.resources.files("localrt").joinpath("web", name).read_bytes()


def _csp(request: Request) -> str:
    host = request.headers.get("host", "")
    # 'self' covers same-host ws:/wss: in current browsers; the explicit sources cover older ones.
    sockets = f" ws://{host} wss://{host}" if host and all(c not in host for c in " ;,'\"") else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


async def talk_page(request: Request) -> Response:
    headers = {**_HEADERS, "Content-Security-Policy": _csp(request)}
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=headers)


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404)
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


routes: list[BaseRoute] = [
    Route(PAGE_PATH, talk_page, methods=["GET"]),
    Route(STATIC_PREFIX + "{name}", static_file, methods=["GET"]),
]
