"""ASGI middleware for the server: cap request body size, check the API key.

With a key, every path except `PUBLIC` (`/health`, for load balancers) needs it,
including the OpenAPI document and its `/docs` page, which describe the API to
whoever can read them. Both are plain ASGI (not Starlette's BaseHTTPMiddleware), so
`request.is_disconnected()` sees a client that went away and abandoned work can be
cancelled.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from typing import Any

from lumenlm.infer.schema import error_response


class BodyLimitMiddleware:
    """ASGI middleware: reject request bodies over `max_bytes` with 413 before parsing."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Callable, send: Callable) -> None:
        resp = error_response(
            413, f"request body is larger than {self.max_bytes} bytes", code="request_too_large"
        )
        await resp(scope, receive, send)


PUBLIC = frozenset({"/health"})


class APIKeyMiddleware:
    """ASGI middleware: every request but `public` paths (and those under `public_prefix`)
    needs `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(
        self, app: Any, api_key: str, public: Collection[str] = PUBLIC, public_prefix: str = ""
    ) -> None:
        self.app, self.api_key = app, api_key.encode()
        self.public, self.prefix = frozenset(public), public_prefix

    def _is_public(self, path: str) -> bool:
        return path in self.public or bool(self.prefix and path.startswith(self.prefix))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not self._is_public(scope.get("path", "")):
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            token = got[7:] if got[:7].lower() == b"bearer " else b""
            if not secrets.compare_digest(token, self.api_key):
                resp = error_response(
                    401,
                    "invalid or missing API key (Authorization: Bearer KEY)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)
