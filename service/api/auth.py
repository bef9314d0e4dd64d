"""Who is calling, and how often: Bearer API keys, per-caller rate limits."""

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import get_session
from service.domain import keys
from service.domain.keys import Principal
from service.errors import ApiError
from service.settings import Settings, get_settings


class RateLimiter:
    """A token bucket per caller, in this process: `per_minute` requests, bursts allowed."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, caller: str) -> int:
        """0 if the request may go ahead, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0
            self._buckets[caller] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / self.rate))


_limiters: dict[int, RateLimiter] = {}


def _limiter(settings: Settings) -> RateLimiter:
    return _limiters.setdefault(settings.rate_limit_per_minute,
                                RateLimiter(settings.rate_limit_per_minute))


def authenticate(request: Request, session: Annotated[Session, Depends(get_session)],
                 ) -> Principal:
    settings = get_settings()
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    principal: Principal | None = None
    if header:
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "unauthorized", "use 'Authorization: Bearer <api key>'",
                           headers={"WWW-Authenticate": "Bearer"})
        principal = keys.authenticate(session=session, secret=secret.strip())
        if principal is None:
            raise ApiError(401, "unauthorized", "the API key is not valid or was revoked",
                           headers={"WWW-Authenticate": "Bearer"})
    elif settings.api_keys_required:
        raise ApiError(401, "unauthorized", "an API key is required: send "
                       "'Authorization: Bearer <api key>' (create one with `cloze keys create`)",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = principal or keys.ANONYMOUS
    if settings.rate_limit_per_minute:
        caller = principal.key_id or f"ip:{request.client.host if request.client else '?'}"
        wait = _limiter(settings).retry_after(caller)
        if wait:
            raise ApiError(429, "rate_limited", f"too many requests; retry in {wait} s",
                           headers={"Retry-After": str(wait)})
    return principal


CallerDep = Annotated[Principal, Depends(authenticate)]
