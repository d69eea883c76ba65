"""The web dashboard's files, served by `palette serve` beside the API (like /blobs, on the event loop).

`GET /` is the page (index.html), `GET /static/<path>` a file under `static/`, `GET /favicon.ico` the
page's icon, and `GET /config.json` tells the page where the API is and how to sign in. The page
routes by URL hash (`#/jobs/<id>`), so no page path ever collides with an API path. On AWS the same
files are published next to the site, with a config.json naming the API's URL and the Cognito hosted UI.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from palette.api.asgi import Receive, Scope, Send, send_error

STATIC_ROOT = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
PAGE_PATHS = frozenset({"/", "/index.html"})
CONFIG_PATH = "/config.json"
FAVICON_PATH = "/favicon.ico"
"""Some browsers ask for it whatever icon the page links; as an API path it answered 401 on every load."""
_NAMED_FILES = {**dict.fromkeys(PAGE_PATHS, "index.html"), FAVICON_PATH: "favicon.svg"}
"""Paths outside /static/ that name a file under it."""

LOCAL_CONFIG = {"api_url": "", "sign_in": {"mode": "password"}}
"""The embedded runtime's config.json: the API is this same origin, and users sign in with the
password set by `palette user create`."""

REVALIDATE = b"no-cache"
"""Our own files change with every release and are small: the browser revalidates them each load."""
VENDOR_CACHE = b"public, max-age=86400"
"""The pinned libraries under static/vendor/ change only with web/package-lock.json."""

CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""The page runs only its own scripts (no inline script, so an injected one never runs) and talks only
to this origin; Chart.js sets inline styles on its canvases."""

_ORIGIN_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def content_security_policy(config: Mapping[str, object]) -> bytes:
    """CONTENT_SECURITY_POLICY with connect-src widened to the origins config.json sends the page to:
    the API's URL, and the Cognito hosted UI whose /oauth2/token js/cognito.js posts to."""
    sign_in = config.get("sign_in")
    domain = str(sign_in.get("domain") or "") if isinstance(sign_in, Mapping) else ""
    origins = []
    for url in (str(config.get("api_url") or ""), domain if "://" in domain or not domain else f"https://{domain}"):
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and _ORIGIN_HOST.fullmatch(parts.netloc):
            origins.append(f"{parts.scheme}://{parts.netloc}")
    if not origins:
        return CONTENT_SECURITY_POLICY
    return CONTENT_SECURITY_POLICY.replace(b"connect-src 'self'", f"connect-src 'self' {' '.join(origins)}".encode())


_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html"}


class WebSite:
    """ASGI handler for the dashboard's page, static files and config.json."""

    def __init__(self, root: Path = STATIC_ROOT, config: dict[str, object] | None = None) -> None:
        self._root = root.resolve()
        self._config = json.dumps(config if config is not None else LOCAL_CONFIG).encode()
        self._csp = content_security_policy(config if config is not None else LOCAL_CONFIG)

    def serves(self, scope: Scope) -> bool:
        path: str = scope["path"]
        return path in _NAMED_FILES or path == CONFIG_PATH or path.startswith(STATIC_PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, "METHOD_NOT_ALLOWED", "use GET", {}, request_id, [(b"allow", b"GET, HEAD")])
            return
        path: str = scope["path"]
        if path == CONFIG_PATH:
            await _send(scope, send, request_id, self._config, "application/json", REVALIDATE)
            return
        relative = _NAMED_FILES.get(path) or path[len(STATIC_PREFIX) :]
        file = self._file(relative)
        if file is None:
            await send_error(send, 404, "NOT_FOUND", f"no file {path!r}", {"path": path}, request_id)
            return
        body = await asyncio.get_running_loop().run_in_executor(None, file.read_bytes)
        cache = VENDOR_CACHE if relative.startswith("vendor/") else REVALIDATE
        await _send(scope, send, request_id, body, content_type(file), cache, self._csp)

    def _file(self, relative: str) -> Path | None:
        """The file `relative` names under the root, or None: a path that leaves the root (`..`, an
        absolute path, a symlink out) or names a directory or a hidden file is not found; so is a name the
        file system cannot hold (a NUL byte, a name too long), which it refuses with ValueError or OSError."""
        if not relative or any(part.startswith(".") for part in relative.split("/")):
            return None
        try:
            candidate = (self._root / relative).resolve()
            if not candidate.is_relative_to(self._root) or not candidate.is_file():
                return None
        except (ValueError, OSError):
            return None
        return candidate


def content_type(file: Path) -> str:
    known = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return f"{known}; charset=utf-8" if known.startswith("text/") or known == "application/json" else known


async def _send(
    scope: Scope,
    send: Send,
    request_id: str,
    body: bytes,
    kind: str,
    cache: bytes,
    csp: bytes = CONTENT_SECURITY_POLICY,
) -> None:
    headers = [
        (b"content-type", kind.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", cache),
        (b"x-content-type-options", b"nosniff"),
        (b"x-request-id", request_id.encode()),
    ]
    if kind.startswith("text/html"):
        headers += [(b"content-security-policy", csp), (b"referrer-policy", b"no-referrer")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
