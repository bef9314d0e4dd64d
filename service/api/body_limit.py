"""Request body limits, enforced in front of the application: before a byte of the body is
read, before the caller is authenticated and before any route parses it.

A declared Content-Length over the limit is refused at once; a chunked body is counted as
it streams and cut off at the limit. Either way the client gets a 413 in the usual error
shape and the server never holds more than the limit of one request's body.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http_errors import error_body

# Room over an upload's limit for the multipart framing and the form fields around the
# file (the upload routes allow the same before counting the file part themselves).
UPLOAD_FRAMING_BYTES = 64 * 1024


class _BodyTooLarge(Exception):
    """Raised into the application when a streamed body passes the limit."""


@dataclass(frozen=True)
class Limit:
    bytes: int
    message: str  # what the client is told
    param: str | None = None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, default: int,
                 routes: Mapping[tuple[str, str], Limit] | None = None) -> None:
        """`default` bytes for every request; `routes` maps (method, path) to another limit
        (the multipart uploads, which stream to storage and have a larger one)."""
        self.app, self.routes = app, dict(routes or {})
        self.default = Limit(default, f"the request body exceeds the limit of {default} bytes")

    def limit_for(self, scope: Scope) -> Limit:
        return self.routes.get((scope["method"], scope["path"].rstrip("/")), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit.bytes:
            await _refuse(send, limit)
            return
        received, tripped, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    tripped = True
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped:  # whatever the app answers to a body cut short, the answer is 413
                return
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not tripped:
                raise
        if tripped and not started:
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _refuse(send: Send, limit: Limit) -> None:
    body = json.dumps(error_body("payload_too_large", limit.message, limit.param)).encode()
    # Connection: close, since the rest of the body is never read.
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
