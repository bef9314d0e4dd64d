"""Every HTTP request: its id (X-Request-ID, accepted or made, echoed in the answer) in the
log context, and its count and latency for GET /metrics, labelled by route template.

A pure ASGI middleware, outermost: a few microseconds a request, nothing read from the body,
and streamed answers pass through untouched. The route label is the template the router
matched (`/v1/jobs/{job_id}`), never the raw path, so ids do not multiply the series; a
request no route matched (a 404, or one the boundary refused first) is `unmatched`.
"""

import logging
import re
import time
import uuid

from prometheus_client import Counter, Histogram, disable_created_metrics
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs

# No `_created` sample beside every series: it doubles what a scrape carries, for a start
# time nobody queries (Prometheus sees resets by itself).
disable_created_metrics()
REQUESTS = Counter("cloze_http_requests", "HTTP requests answered, by route template and "
                   "status", ["method", "route", "status"])
LATENCY = Histogram("cloze_http_request_duration_seconds", "Time from a request's arrival "
                    "to the end of its answer (streams: their whole length)",
                    ["method", "route"],
                    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))

UNMATCHED = "unmatched"
# Any other method (a made-up one) is counted as "other": labels stay a fixed set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A caller's request id is kept when it is short and plain (it is logged and echoed);
# anything else is replaced by one of ours rather than refused.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_JOB_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_-]{1,64})(?:/|$)")
access_log = logging.getLogger("cloze.access")


def request_id_of(headers: Headers) -> str:
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The template of the route the router matched (it writes it into the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, log_requests: bool | None = None) -> None:
        self.app = app
        # One structured line per request where logs are JSON (uvicorn's own access line
        # is then off); the console keeps uvicorn's.
        self.log_requests = logs.json_wanted() if log_requests is None else log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id_of(Headers(scope=scope))
        job = _JOB_PATH.match(scope["path"])
        status = 500  # what the client gets if the app raises before answering
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        reset = logs.bind(request=rid, job=job.group(1) if job else None)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # The ids stay set: the 500 handler runs after this, outside every middleware,
            # in this request's own task (whose context ends with it), and logs with them.
            self._record(scope, status, time.perf_counter() - started)
            raise
        self._record(scope, status, time.perf_counter() - started)
        reset()

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = route_of(scope)
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(seconds)
        if self.log_requests:
            access_log.info("%s %s %d %.1f ms", method, scope["path"], status, seconds * 1e3,
                            extra={"fields": {"method": method, "route": route,
                                              "path": scope["path"], "status": status,
                                              "duration_ms": round(seconds * 1e3, 2)}})
