"""What the scoring service refuses before a request reaches a model: bodies over a size limit (413) and
requests that do not fit the schema (422, without echoing what was sent).

``BodyLimit`` is a pure ASGI middleware: a declared ``Content-Length`` over the limit is answered before
one byte of the body is read; a body without one (chunked) is counted as it streams and answered the
moment it passes the limit. Either way the connection is closed, so the rest is never read.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a streamed body passes the limit (the 413 is already sent)."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server rejects a malformed Content-Length before the app sees it
    return None


def too_large_body(max_bytes: int, *, declared: int | None = None) -> bytes:
    size = f"{declared} bytes" if declared is not None else "more bytes"
    return json.dumps({
        "error": f"request body of {size} is over the limit of {max_bytes} bytes",
        "hint": "send a shorter prompt and response (LAKELOOP_SERVE_MAX_BODY_BYTES sets the limit)",
    }).encode()


async def _send_413(send: Send, max_bytes: int, declared: int | None) -> None:
    body = too_large_body(max_bytes, declared=declared)
    await send({
        "type": "http.response.start",
        "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over ``max_bytes``, without reading the rest of it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes, declared)
            return
        seen = 0
        started = answered = False

        async def limited_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not started:
                        answered = True
                        await _send_413(send, self.max_bytes, None)
                    raise BodyTooLarge(f"request body passed {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:  # the 413 went out; what the app says about the broken-off body is not sent
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not answered:  # the app had started its response before the body ran over: nothing to answer
                raise


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, never the value that was sent (pydantic's ``input`` and ``ctx`` are dropped)."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """The service's 422: field locations and messages only, so an error never echoes a prompt back."""
    return JSONResponse({"detail": validation_errors(exc)}, status_code=422)
