"""Authentication before the body: a request that may carry one (anything but GET, HEAD and
OPTIONS) to /v1 is told who it is, or refused with 401, before a byte of its body is read.

FastAPI reads and parses a route's JSON body before it solves any dependency, the caller
included: the probe was 7.9 MB of `{"k0":[1],...}` with no key, parsed and validated for
2.9 s on the event loop before its 401 (six at once held /health for 10 s), and inference
routes answered 422 before 401. Here the caller is identified first (in a thread: it may
take the database); the route's own dependency then finds it in the scope and charges the
per-minute budget as before. A request whose caller needs no lookup (the keyless local
default, with no key of ours) passes straight through, as today.
"""

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service import http_errors
from service.api.auth import IDENTIFIED, identify, needs_lookup
from service.db import session_scope
from service.domain.keys import Principal
from service.settings import Settings, get_settings

BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


def _identify(scope: Scope, settings: Settings) -> Principal:
    with session_scope() as session:
        return identify(scope, session, settings)


class AuthFirstMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS or \
                not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        if needs_lookup(scope, settings):
            try:
                scope[IDENTIFIED] = await run_in_threadpool(_identify, scope, settings)
            except Exception as exc:
                # 401, 429, or the database down: the answer the route would have given,
                # in the same shape, and the body is never read.
                response = http_errors.response_for(exc)
                if response is None:
                    raise
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
