"""Who is calling, from where, and how often: Bearer API keys, whether the request needs
one (only a request from this machine straight to a loopback socket may go without), and
per-caller rate limits (in this process, or shared through Redis when Redis is the broker)."""

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import get_session
from service.domain import keys
from service.domain.keys import Principal
from service.http_errors import ApiError
from service.settings import Settings, get_settings

log = logging.getLogger("cloze.auth")

# Headers a proxy adds; a request carrying one did not come straight from this machine.
FORWARDED_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def is_loopback(host: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def is_forwarded(scope: Mapping[str, Any]) -> bool:
    return any(name in FORWARDED_HEADERS for name, _ in scope.get("headers", ()))


def is_local(scope: Mapping[str, Any]) -> bool:
    """The request reached a loopback socket from this machine, with no proxy in between.

    Judged from the connection itself (scope["server"], scope["client"]), not from the
    CLOZE_HOST setting: `uvicorn service.api.app:app --host 0.0.0.0` leaves that setting at
    its loopback default while the API is reachable from other machines.
    """
    server, client = scope.get("server") or (None,), scope.get("client") or (None,)
    return is_loopback(server[0]) and is_loopback(client[0]) and not is_forwarded(scope)


def keys_required(scope: Mapping[str, Any], settings: Settings) -> bool:
    if settings.require_api_keys is not None:
        return settings.require_api_keys
    return settings.api_keys_required or not is_local(scope)


_warned_forwarded = threading.Event()


def client_address(scope: Mapping[str, Any], settings: Settings) -> str:
    """What an unauthenticated caller is rate-limited by: the connection's peer address.

    `cloze api` makes uvicorn believe X-Forwarded-For only from CLOZE_TRUSTED_PROXIES, so
    the client address is then the real one. With no proxy trusted, a request that still
    carries forwarded headers may have had its address copied from them (plain uvicorn
    believes them from loopback by default), so it is the sender's choice: all such
    requests share one bucket rather than one bucket per made-up address.
    """
    if not settings.trusted_proxies and is_forwarded(scope):
        if not _warned_forwarded.is_set():
            _warned_forwarded.set()
            log.warning("requests carry X-Forwarded-For but CLOZE_TRUSTED_PROXIES is empty: "
                        "they share one rate-limit bucket; list your proxies to fix this")
        return "forwarded"
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Limiter(Protocol):
    def retry_after(self, caller: str) -> int: ...


class RateLimiter:
    """A token bucket per caller, in this process: `per_minute` requests, bursts allowed.

    At most `max_callers` buckets are kept: a bucket idle for a full refill is the same as
    no bucket and is dropped, and beyond the bound the least recently seen goes first, so
    rotating made-up callers costs bounded memory.
    """

    def __init__(self, per_minute: int, max_callers: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.refill_s = self.capacity / self.rate
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, caller: str) -> int:
        """0 if the request may go ahead, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = max(1, math.ceil((1 - tokens) / self.rate))
            self._buckets[caller] = (tokens, now)  # now the most recently seen
            self._evict(now)
            return wait

    def _evict(self, now: float) -> None:
        while self._buckets:
            oldest, (_, last) = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_callers and now - last < self.refill_s:
                return
            del self._buckets[oldest]


# GCRA (a token bucket kept as one timestamp): the key holds the "theoretical arrival time";
# a request is allowed while it is at most `capacity` emission intervals ahead of now. The
# key expires once the bucket is full again, so Redis holds only active callers.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > burst then return new_tat - burst - now end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now))
return 0
"""


class RedisRateLimiter:
    """The same limit shared by every API process through Redis (when it is the broker).

    If Redis cannot be reached the process falls back to its own limiter for a few seconds
    rather than failing requests that do not need the broker.
    """

    RETRY_REDIS_S = 5.0

    def __init__(self, url: str, per_minute: int, namespace: str,
                 fallback: RateLimiter) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._gcra = self._redis.register_script(_GCRA)
        self.interval_ms = 60_000 / per_minute
        self.capacity = per_minute
        self.namespace = namespace
        self.fallback = fallback
        self._down_until = 0.0

    def retry_after(self, caller: str) -> int:
        import redis

        if time.monotonic() >= self._down_until:
            try:
                wait_ms = int(self._gcra(keys=[f"{self.namespace}:{caller}"],
                                         args=[self.interval_ms, self.capacity]))
                return math.ceil(wait_ms / 1000) if wait_ms > 0 else 0
            except redis.RedisError as exc:
                self._down_until = time.monotonic() + self.RETRY_REDIS_S
                log.warning("rate limits fall back to this process: Redis %s",
                            exc.__class__.__name__)
        return self.fallback.retry_after(caller)


_limiters: dict[tuple[object, ...], Limiter] = {}
_limiters_lock = threading.Lock()


def limiter(settings: Settings) -> Limiter:
    key = (settings.rate_limit_per_minute, settings.rate_limit_max_callers,
           settings.broker_url, settings.train_queue)
    with _limiters_lock:
        if key not in _limiters:
            local = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_max_callers)
            shared: Limiter = local
            if settings.broker_url.startswith(("redis://", "rediss://")):
                # One deployment's namespace: tests and stacks may share one Redis.
                shared = RedisRateLimiter(settings.broker_url, settings.rate_limit_per_minute,
                                          f"cloze:{settings.train_queue}:ratelimit", local)
            _limiters[key] = shared
        return _limiters[key]


def _charge(settings: Settings, caller: str) -> None:
    if not settings.rate_limit_per_minute:
        return
    wait = limiter(settings).retry_after(caller)
    if wait:
        raise ApiError(429, "rate_limited", f"too many requests; retry in {wait} s",
                       headers={"Retry-After": str(wait)})


def caller_bucket(principal: Principal, scope: Mapping[str, Any], settings: Settings) -> str:
    """What a caller's limits are counted by (requests per minute, open streams): its key,
    or without one the connection's address."""
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return f"ip:{client_address(scope, settings)}"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(scope: Mapping[str, Any]) -> tuple[str, str]:
    """(scheme, secret) of the Authorization header."""
    header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"),
                  b"")
    scheme, _, secret = header.decode("latin-1").partition(" ")
    return scheme, secret.strip()


def needs_lookup(scope: Mapping[str, Any], settings: Settings) -> bool:
    """Whether who calls takes the database to tell: a key is required, or one of ours is
    presented (a keyless instance still refuses a bad one)."""
    if keys_required(scope, settings):
        return True
    scheme, secret = _bearer(scope)
    return scheme.lower() == "bearer" and keys.looks_like_key(secret)


# Where AuthFirstMiddleware (service/api/auth_first.py) leaves the caller it identified
# before the body was read, so the route's dependency does not look the key up again.
IDENTIFIED = "cloze.identified"


def identify(scope: Mapping[str, Any], session: Session, settings: Settings) -> Principal:
    """Who calls, or 401. Nothing is charged to the per-minute budget except a failed key
    (charged to the client address, so guessing keys is rate-limited too)."""
    if not needs_lookup(scope, settings):
        # No key needed, and this is not one of ours: huggingface_hub sends a logged-in
        # user's Hugging Face token to every URL, and it must not turn away that user.
        return keys.ANONYMOUS
    scheme, secret = _bearer(scope)
    bearer = scheme.lower() == "bearer" and bool(secret)
    principal = keys.authenticate(session=session, secret=secret) if bearer else None
    if principal is None:
        _charge(settings, f"ip:{client_address(scope, settings)}")
        if not scheme:
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <api "
                                "key>' (create one with `cloze keys create`)")
        if not bearer:
            raise _unauthorized("use 'Authorization: Bearer <api key>'")
        raise _unauthorized("the API key is not valid or was revoked")
    return principal


def anonymous_on_the_loop(request: Request, settings: Settings, *, budgeted: bool = True
                          ) -> Principal | None:
    """The anonymous caller, charged (when `budgeted`), when that needs neither the
    database (no key is required and none of ours is presented) nor the network (the rate
    limiter is this process's own); else None: authenticate in a thread. Raises 429 as
    authenticate does."""
    if needs_lookup(request.scope, settings):
        return None
    if not budgeted:
        return keys.ANONYMOUS
    if settings.rate_limit_per_minute and not isinstance(limiter(settings), RateLimiter):
        return None
    _charge(settings, caller_bucket(keys.ANONYMOUS, request.scope, settings))
    return keys.ANONYMOUS


def authenticate(request: Request, session: Annotated[Session, Depends(get_session)],
                 settings: Annotated[Settings, Depends(get_settings)]) -> Principal:
    return authenticate_caller(request, session, settings)


def authenticate_caller(request: Request, session: Session, settings: Settings, *,
                        budgeted: bool = True) -> Principal:
    """The caller, charged against the per-minute budget unless `budgeted` is false (then
    only failed keys are charged: guessing stays rate-limited)."""
    principal = request.scope.get(IDENTIFIED)
    if not isinstance(principal, Principal):
        principal = identify(request.scope, session, settings)
    if budgeted:
        _charge(settings, caller_bucket(principal, request.scope, settings))
    return principal


CallerDep = Annotated[Principal, Depends(authenticate)]
