"""Large JSON bodies parsed and validated in a worker thread, not on the event loop.

FastAPI parses a route's JSON body and validates it against the route's model on the event
loop, before the route runs: 7.9 MB of `{"k0":[1],...}` took 0.7 s to parse and 2 s more to
list its 572,224 validation errors, and meanwhile nothing else was answered, /health
included. Here a body over INLINE_BYTES is parsed and validated in a thread, one body at a
time per process (the work holds the GIL: more threads would only take turns with the
event loop more often), and handed to FastAPI as its validated model, which FastAPI
accepts as it is. A body with more than MAX_ERRORS validation errors is told how many it
has, not each: turning half a million errors into Python objects costs more than finding
them. A dense body (DENSE_VALUES) is parsed by json's Python scanner, which lets go of the
GIL as it goes.

Smaller bodies, which are nearly all of them (a fill-mask request is ~100 bytes), take
FastAPI's own path: a trip to a thread costs more than parsing them.
"""

import asyncio
import email.message
import json
import json.scanner
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

INLINE_BYTES = 16 * 1024  # parsed on the loop below this: ~1 ms at worst
# Bodies with more separators than this (an upper bound on their values) are parsed by
# json's Python scanner (strings still in C): ~5x slower than its C scanner, but it lets go of
# the GIL every few milliseconds, where the C scanner holds it for the whole body (0.7 s for
# the probe's 570,000 keys). Texts, the usual large bodies, stay far below.
DENSE_VALUES = 50_000
# Errors turned into Python objects for the answer (which names the first; ~3 us each, so
# at most ~30 ms); a body with more is told how many it has. A union field multiplies them
# (one per branch): 2,000 token lists and one string in OpenAI's `input` are 4,003.
MAX_ERRORS = 10_000

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter]" = \
    weakref.WeakKeyDictionary()


def _one_at_a_time() -> CapacityLimiter:
    """One parsing thread per event loop (a limiter belongs to the loop it was made on)."""
    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = CapacityLimiter(1)
    return _limiters[loop]


def is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and \
        (subtype == "json" or subtype.endswith("+json"))


class _Interruptible(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]


def _loads(body: bytes) -> Any:
    if body.count(b",") + body.count(b":") > DENSE_VALUES:
        # Decoded as json.loads decodes bytes.
        return _Interruptible().decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    return json.loads(body)


def parse(body: bytes, model: TypeAdapter[Any]) -> Any:
    """The body as the route's validated model, or the errors FastAPI would raise."""
    try:
        value = _loads(body)
    except json.JSONDecodeError as exc:  # as FastAPI reports it
        raise RequestValidationError([{
            "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
            "input": {}, "ctx": {"error": exc.msg}}]) from None
    except (ValueError, RecursionError):  # not UTF-8, nested too deep
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return model.validate_python(value, from_attributes=True)
    except ValidationError as exc:
        count = exc.error_count()
        if count > MAX_ERRORS:
            raise RequestValidationError([{
                "type": "too_many_errors", "loc": ("body",), "input": None,
                "msg": f"the body does not match the schema in {count} places (see "
                       "/openapi.json)"}]) from None
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


class _Parsed(Request):
    """The request with its body read and its JSON parsed already."""

    def __init__(self, request: Request, body: bytes, value: Any) -> None:
        super().__init__(request.scope, request.receive)
        self._raw, self._value = body, value

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._value


def _parsing_first(route: APIRoute, handler: Handler) -> Handler:
    field = route.body_field
    assert field is not None
    # The adapter FastAPI validates the body with, so what it is handed passes unchanged.
    model: TypeAdapter[Any] = field._type_adapter

    async def handle(request: Request) -> Response:
        if is_json(request.headers.get("content-type")):
            body = await request.body()
            if len(body) > INLINE_BYTES:
                value = await anyio.to_thread.run_sync(parse, body, model,
                                                       limiter=_one_at_a_time())
                request = _Parsed(request, body, value)
        return await handler(request)

    return handle


class JsonBodyRoute(APIRoute):
    """A route whose one JSON body (not a form, not several embedded bodies) is parsed
    as above: `APIRouter(route_class=JsonBodyRoute)` for the API's routers."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        info = self.body_field.field_info if self.body_field is not None else None
        if isinstance(info, params.Body) and not isinstance(info, params.Form) and \
                not self._embed_body_fields:
            return _parsing_first(self, handler)
        return handler
