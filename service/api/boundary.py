"""The network boundary, checked before any route runs (and before any body is read).

- Host: a page on evil.example whose name re-resolves to 127.0.0.1 (DNS rebinding) reaches
  a keyless loopback API from the victim's browser, with the attacker's name in `Host`.
  Without a key to stop it, the Host header must be one of ours.
- Origin: a browser marks every cross-site POST with `Origin`; a form on another site can
  post a multipart upload without any CORS preflight. State-changing requests from an
  origin that is neither the API's own nor listed in CLOZE_CORS_ORIGINS get 403.
"""

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import keys_required
from service.http_errors import error_body
from service.settings import Settings, get_settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _hostname(host: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _without_default_port(netloc: str) -> str:
    netloc = netloc.strip().lower()
    for port in (":80", ":443"):
        if netloc.endswith(port):
            return netloc[: -len(port)]
    return netloc


def host_allowed(host: str, scope: Scope, settings: Settings) -> bool:
    if not settings.allowed_hosts and keys_required(scope, settings):
        return True  # a key is the boundary; set CLOZE_ALLOWED_HOSTS to check Host as well
    names = settings.allowed_hosts or [*LOOPBACK_NAMES, settings.host]
    return "*" in names or _hostname(host) in {_hostname(n) for n in names}


def origin_allowed(origin: str, host: str, settings: Settings) -> bool:
    """The API's own origin (same host and port as the request's Host), or a listed one.
    "null" (a sandboxed frame, a file:// page) is nobody's own origin."""
    if origin in settings.cors_origins:
        return True
    scheme, sep, netloc = origin.partition("://")
    return bool(sep) and scheme in {"http", "https"} and bool(host) and \
        _without_default_port(netloc) == _without_default_port(host)


class BoundaryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal: JSONResponse | None = None
        if not host_allowed(host, scope, settings):
            refusal = JSONResponse(error_body(
                "invalid_host", f"this API does not answer to the host name {host[:100]!r}; "
                "add it to CLOZE_ALLOWED_HOSTS if it is yours", "Host"), 400)
        elif scope["method"] in STATE_CHANGING and "origin" in headers and \
                not origin_allowed(headers["origin"], host, settings):
            refusal = JSONResponse(error_body(
                "forbidden_origin", f"requests from the web page at "
                f"{headers['origin'][:100]!r} may not change anything here; list trusted "
                "browser origins in CLOZE_CORS_ORIGINS", "Origin"), 403)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
