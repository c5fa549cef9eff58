"""The API key and the request-body limit, as plain ASGI middleware (they cover /mcp too)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# The page shell, its assets, the API description and the health checks carry no data: open.
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, detail: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """`Authorization: Bearer <MMRAG_API_KEY>` on every path but OPEN_PATHS; compared in constant time.

    The key is never echoed: a refusal says only that a key is missing or wrong.
    """

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._key is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        challenge = [(b"www-authenticate", b'Bearer realm="mmrag"')]
        if not header:
            return await _send_json(send, 401, "missing API key: send Authorization: Bearer <MMRAG_API_KEY>", challenge)
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self._key):
            return await _send_json(send, 401, "wrong API key", challenge)
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413: by Content-Length at once, or while a chunked body streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body too large (limit {self.max_bytes} bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return await _send_json(send, 400, "bad Content-Length header")
            if too_big:
                return await _send_json(send, 413, message)
        received = 0
        too_large = False

        async def limited_receive() -> dict:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    # Stop reading; whatever the app answers to the cut body is replaced by a 413.
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        replaced = False

        async def checked_send(msg: dict) -> None:
            nonlocal replaced
            if too_large:
                if not replaced:
                    replaced = True
                    await _send_json(send, 413, message)
                return
            await send(msg)

        await self.app(scope, limited_receive, checked_send)
