"""Streams a multipart/form-data request body part by part, never holding it whole.

Starlette's form parser spools a whole file before the route sees it, so a size limit
could only be checked afterwards; this parser lets the route refuse at the limit.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from jobspec import names
from service.http_errors import ApiError


@dataclass
class PartStart:
    name: str
    filename: str | None


@dataclass
class PartData:
    data: bytes


@dataclass
class _State:
    events: list[PartStart | PartData] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "unsupported_media_type",
                       "send the corpus as multipart/form-data with a 'file' part")
    return options[b"boundary"]


FRAMING_BYTES = 64 * 1024  # room for the boundaries, part headers and small form fields


async def stream_parts(request: Request, max_bytes: int | None = None
                       ) -> AsyncIterator[PartStart | PartData]:
    """Yield PartStart when a part begins, then PartData chunks of its body. The whole
    body, whatever parts it holds, is bounded by max_bytes plus framing (a chunked body has
    no Content-Length to refuse it by)."""
    state = _State()

    # (python-multipart bounds each header line itself: "Maximum header size exceeded".)
    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        if bytes(state.header_field).lower() == b"content-disposition":
            state.disposition = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        _, opts = parse_options_header(state.disposition)
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        state.events.append(PartStart(name, filename.decode("utf-8", "replace")
                                      if filename is not None else None))
        state.disposition = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state.events.append(PartData(data[start:end]))

    parser = MultipartParser(_boundary(request), {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
    })
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if max_bytes is not None and received > max_bytes + FRAMING_BYTES:
            raise ApiError(413, "payload_too_large",
                           f"upload exceeds the limit of {max_bytes} bytes", "file")
        try:
            parser.write(chunk)
        except Exception:  # the parser's errors carry no user-facing detail worth more
            raise ApiError(400, "invalid_multipart", "malformed multipart/form-data body") from None
        events, state.events = state.events, []
        for event in events:
            yield event
    try:
        parser.finalize()
    except Exception:
        raise ApiError(400, "invalid_multipart", "malformed multipart/form-data body") from None


def refuse_declared_oversize(request: Request, limit: int) -> None:
    """413 before reading a byte when the declared body is over the limit (a little room
    is left for the multipart framing around the file)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FRAMING_BYTES:
        raise ApiError(413, "payload_too_large", f"upload exceeds the limit of {limit} bytes",
                       "file")


def form_name(raw: bytes | bytearray, param: str = "name") -> str | None:
    """A name sent as a form field: UTF-8 that keeps the name rule (jobspec/names.py) once
    stripped; None when blank."""
    try:
        name = bytes(raw).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError(422, "invalid_request", f"{param}: must be UTF-8 text", param) from None
    if (why := names.problem(name)) is not None:  # the one rule a job's name keeps too
        raise ApiError(422, "invalid_request", f"{param}: {why}", param)
    return name or None
