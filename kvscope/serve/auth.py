"""One authentication rule for the whole app: with an API key set, every request must
carry `Authorization: Bearer <key>`, except `/health`, `/metrics` when the operator
allows scrapers without the key, and the scope's static files (HTML, JavaScript and
CSS that hold no data: the pages ask for the key and send it on every API call).

It is an ASGI middleware wrapped around the whole app, so a route added later is
behind the key by default; the only way past it is the short list above. Keys are
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from kvscope.serve.body_limit import ASGIApp, Receive, Send
from kvscope.serve.errors import error_response

ALWAYS_PUBLIC = frozenset({"/health"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, public_metrics: bool = False,
                 static_dir: Path | None = None) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.public = ALWAYS_PUBLIC | ({"/metrics"} if public_metrics else set())
        self.static_dir = static_dir.resolve() if static_dir is not None else None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _allowed(self, scope: MutableMapping[str, Any]) -> bool:
        path = scope.get("path", "")
        if path in self.public or self._is_static_file(path, scope.get("method", "GET")):
            return True
        return bearer_matches(_header(scope, b"authorization"), self.expected)

    def _is_static_file(self, path: str, method: str) -> bool:
        """A file of the scope's pages (or a folder with an index.html), read with GET
        or HEAD; any other path, an API route's included, needs the key."""
        if self.static_dir is None or method not in ("GET", "HEAD"):
            return False
        target = (self.static_dir / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.static_dir):
            return False
        return target.is_file() or (target / "index.html").is_file()


def bearer_matches(header: bytes, expected: bytes) -> bool:
    """`header` (an Authorization header's raw bytes) is `Bearer <expected>`."""
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


def _header(scope: MutableMapping[str, Any], name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return b""
