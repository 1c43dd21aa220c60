"""Request bodies are limited before anything reads them, authentication included.

FastAPI reads and parses a route's body before it resolves the route's dependencies, the
bearer token check among them: without a limit an anonymous client had a 200 MB body read
(and held) before its `401`. This ASGI middleware answers `413` at once for a declared
`Content-Length` over the limit, and counts the bytes of any other body (chunked) as the
application receives them, answering 413 as soon as they pass the limit. Either way the
connection is closed and the rest of the body never read.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE = b'{"detail":"request body too large"}'


class BodyLimit:
    """Wraps an ASGI app; `limit` is in bytes."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _refuse(send)
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            """The app's receive: past the limit the 413 goes out at once, and the app is
            told the client left (so it stops; whatever it answers is dropped)."""
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    if not started:
                        await _refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted, watched)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _refuse(send: Any) -> None:
    """413, and the connection closes: the rest of the body is never read."""
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(TOO_LARGE)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": TOO_LARGE})
