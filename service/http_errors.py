"""One error shape on every route: {"error": {"code", "message", "param"}}."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobspec.field_errors import error_param
from service import logs
from service.domain.refusals import (
    Conflict,
    DomainError,
    Invalid,
    LimitReached,
    NotFound,
    TooLarge,
    Unavailable,
    Unsupported,
)

log = logging.getLogger("cloze.api")


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Documented on every route, so clients (and schemathesis) know the one error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in {
        400: "malformed request", 401: "missing or invalid API key",
        403: "a browser page of another origin may not change anything", 404: "not found",
        409: "conflict", 413: "too large", 415: "unsupported media type",
        422: "invalid request", 429: "rate limited", 503: "a dependency is unavailable",
    }.items()}


class ApiError(Exception):
    """An error the client caused (or a dependency that is down), with its HTTP status: for
    the API layer (auth, middleware, request parsing); the domain raises DomainError."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers


def error_body(code: str, message: str, param: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "param": param}}


# The HTTP status of each kind of refusal the domain and the serving layer (service/inference/)
# raise (service/domain/refusals.py); a Retryable's retry_after_s becomes Retry-After.
DOMAIN_STATUS: dict[type, int] = {
    NotFound: 404, Invalid: 422, Conflict: 409, TooLarge: 413, Unsupported: 415,
    LimitReached: 429, Unavailable: 503,
}


def domain_status(exc: DomainError) -> int:
    """The status of the most specific kind `exc` is (a subclass answers as its kind)."""
    for kind in type(exc).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    return 422  # a DomainError of no listed kind: still the client's doing


def api_error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.param), exc.status,
                        headers=exc.headers)


def db_down_response(exc: OperationalError) -> JSONResponse:
    log.error("database unavailable: %s", exc.__class__.__name__)
    return JSONResponse(error_body("service_unavailable", "the database is unavailable"),
                        503, headers={"Retry-After": "5"})


def pool_exhausted_response(_: PoolTimeout) -> JSONResponse:
    # Every database connection of this process is in use: tell the client to come back
    # soon rather than queue it (a hang) or answer 500.
    log.warning("database connection pool exhausted")
    return JSONResponse(error_body("service_unavailable", "the service is busy; retry "
                                   "shortly"), 503, headers={"Retry-After": "1"})


def response_for(exc: Exception) -> JSONResponse | None:
    """The answer to an error raised in a middleware, where the app's exception handlers
    do not reach (they run inside every middleware): the same as the handlers give, or
    None for an error of no known kind."""
    if isinstance(exc, ApiError):
        return api_error_response(exc)
    if isinstance(exc, PoolTimeout):
        return pool_exhausted_response(exc)
    if isinstance(exc, OperationalError):
        return db_down_response(exc)
    return None


class AnswerUnhandled:
    """An unhandled error answered 500 here, inside every middleware: Starlette's outermost
    error middleware would answer the same (the Exception handler below) but then re-raise
    it for the server to log, and uvicorn closes a connection on which the app raised, so
    each 500 also dropped the client's keep-alive connection and what it had pipelined.
    Added first, so innermost: the 500 passes the other middleware (request id, metrics)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception:
            if started:  # half an answer is out: only closing the connection ends it
                raise
            log.exception("unhandled error")  # never a stack trace to the client
            await JSONResponse(error_body("internal_error", "internal server error"),
                               500)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(AnswerUnhandled)  # first, so innermost (see the class)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after_s", None)
        return JSONResponse(error_body(exc.code, exc.message, exc.param), domain_status(exc),
                            headers=None if retry_after is None else
                            {"Retry-After": str(retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {}
        param = error_param(first, in_request=True)  # "hyperparameters.learning_rate"
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "union_tag_invalid":  # an unknown job "type"
            ctx: dict[str, Any] = first.get("ctx") or {}
            param = "type"
            msg = f"must be one of {ctx.get('expected_tags', 'pretrain, finetune')}"
            if ctx.get("tag") == "sweep":  # a sweep is no job: it has a route of its own
                msg += "; a sweep is submitted to POST /v1/sweeps"
        message = f"{param}: {msg}" if param else msg
        return JSONResponse(error_body("invalid_request", message, param), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        return db_down_response(exc)

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        return pool_exhausted_response(exc)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # Never send a stack trace or a path to the client; the log has it.
        log.exception("unhandled error")
        # This handler runs outside every middleware (Starlette's ServerErrorMiddleware), so
        # the request id is added here; the observability middleware left it set for us.
        rid = logs.request_id.get()
        return JSONResponse(error_body("internal_error", "internal server error"), 500,
                            headers={"X-Request-ID": rid} if rid else None)
