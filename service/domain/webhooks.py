"""Signed webhooks: each status change of a job with a webhook becomes a delivery row,
written in the transaction that changes the status (an outbox: no change without its
delivery, no delivery without its change); senders (service/webhooks.py) claim due
deliveries, POST them and record how each attempt went.

A job's deliveries go out in the order of its status changes: one waits while an earlier
one of the same job is still pending (being sent or waiting for a retry).
"""

import hashlib
import hmac
import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased

from service.db import rowcount
from service.domain.errors import Invalid
from service.domain.ids import new_id
from service.domain.schemas import Timestamp
from service.domain.tables import JobRow, WebhookDeliveryRow, utcnow
from service.settings import Settings

SIGNATURE_HEADER = "X-Cloze-Signature"
DELIVERY_HEADER = "X-Cloze-Delivery"
EVENT_HEADER = "X-Cloze-Event"
TIMESTAMP_HEADER = "X-Cloze-Timestamp"
# Characters of an attempt's error kept in the record.
MAX_ERROR_CHARS = 500
D = WebhookDeliveryRow  # short, for the queries below
_Earlier = aliased(WebhookDeliveryRow)


class DeliveryState(StrEnum):
    PENDING = "pending"  # being sent, or waiting for its next attempt
    DELIVERED = "delivered"  # a 2xx answer
    EXHAUSTED = "exhausted"  # every attempt failed; no more are made


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Cloze-Signature value: HMAC-SHA256 of "<timestamp>." + the raw body, keyed by
    the secret. The attempt's time is signed so that a receiver can refuse a replay of an
    old delivery (as Stripe and Standard Webhooks do)."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the API shows it: the webhook's secret replaced by whether one is set."""
    hook = spec.get("webhook")
    if not isinstance(hook, dict):
        return spec
    return {**spec, "webhook": {"url": hook.get("url"), "secret_set": bool(hook.get("secret"))}}


class UnsafeTarget(ValueError):
    """A webhook host that does not resolve, or resolves to a non-global address."""


def _is_global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local IPv6's %scope
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    return ip.is_global and not ip.is_multicast


def global_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them global (public); else UnsafeTarget
    naming the first that is not (private, loopback, link-local, reserved, ...)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget(f"{host} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if not _is_global(address):
            raise UnsafeTarget(f"{host} resolves to {address}, a private, loopback, "
                               "link-local or otherwise non-public address")
    return addresses


def check_target(url: str, settings: Settings) -> None:
    """Refuse (Invalid, 422) a webhook URL that reaches non-public addresses, unless the
    settings allow them. Resolves the host: call it off the event loop."""
    if settings.webhook_private_addresses:
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")
    try:
        global_addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (UnsafeTarget, UnicodeError) as exc:
        raise Invalid("invalid_request", f"webhook.url: {exc}; webhooks must reach a public "
                      "address (CLOZE_WEBHOOK_ALLOW_PRIVATE=true allows others)",
                      "webhook.url") from None


def record(session: Session, job_id: str, *, private_ok: bool | None = None) -> None:
    """Queue a delivery of the job's present status, if the job has a webhook; in the
    caller's transaction, right after the status changed. `private_ok`: the submitting
    API's address policy (None: as the job's first delivery was given it)."""
    row = session.get(JobRow, job_id, populate_existing=True)
    if row is None or not (row.spec or {}).get("webhook"):
        return
    if private_ok is None:
        private_ok = bool(session.scalar(select(D.private_ok).where(D.job_id == job_id)
                                         .order_by(D.id).limit(1)))
    from service.domain.jobs import JobPublic  # jobs imports lifecycle, which calls this

    delivery_id, event = new_id("whd"), f"job.{row.status}"
    body = {**JobPublic.of(row).model_dump(mode="json"), "event": event,
            "delivery_id": delivery_id}
    session.add(WebhookDeliveryRow(
        delivery_id=delivery_id, job_id=job_id, event=event, attempts=0,
        body=json.dumps(body, separators=(",", ":")), state=DeliveryState.PENDING.value,
        next_attempt_at=utcnow(), private_ok=private_ok))


@dataclass(frozen=True)
class Due:
    """A claimed delivery: what one attempt sends."""

    id: int
    delivery_id: str
    event: str
    body: str
    attempt: int  # 1 for the first
    url: str
    secret: str
    private_ok: bool  # the submitting API allowed private addresses


def claim_next(session: Session, *, now: datetime, lease_s: float) -> Due | None:
    """Claim the oldest due delivery (committed), or None when none is due. The claim is a
    conditional UPDATE on the attempt count, so of several senders one wins; it holds the
    delivery for lease_s, after which another sender retries it (its sender died)."""
    earlier_pending = exists().where(_Earlier.job_id == D.job_id, _Earlier.id < D.id,
                                     _Earlier.state == DeliveryState.PENDING.value)
    candidates = session.execute(
        select(D.id, D.attempts).where(D.state == DeliveryState.PENDING.value,
                                       D.next_attempt_at <= now, ~earlier_pending)
        .order_by(D.next_attempt_at, D.id).limit(10)).all()
    for delivery, attempts in candidates:
        claimed = session.execute(update(D).where(
            D.id == delivery, D.state == DeliveryState.PENDING.value, D.attempts == attempts,
        ).values(attempts=attempts + 1, last_attempt_at=now,
                 next_attempt_at=now + timedelta(seconds=lease_s)))
        if rowcount(claimed) != 1:
            continue  # another sender took it
        session.commit()
        row, spec = session.execute(select(D, JobRow.spec).join(JobRow, JobRow.id == D.job_id)
                                    .where(D.id == delivery)).one()
        hook = spec["webhook"]
        return Due(id=row.id, delivery_id=row.delivery_id, event=row.event, body=row.body,
                   attempt=row.attempts, url=hook["url"], secret=hook["secret"],
                   private_ok=row.private_ok)
    return None


def retry_delay_s(attempt: int, settings: Settings) -> float:
    """Seconds after failed attempt n (1, 2, ...) before the next: doubling from the base."""
    return float(settings.webhook_retry_base_s * 2 ** (attempt - 1))


def record_attempt(session: Session, due: Due, *, now: datetime, status_code: int | None,
                   error: str | None, settings: Settings) -> None:
    """The attempt's outcome: delivered, a retry scheduled, or given up after the last.
    Only while the claim is still this attempt's (a sender whose lease ran out and was
    overtaken records nothing)."""
    values: dict[str, Any] = {"status_code": status_code,
                              "error": error[:MAX_ERROR_CHARS] if error else None}
    if error is None:
        values |= {"state": DeliveryState.DELIVERED.value, "next_attempt_at": None}
    elif due.attempt >= settings.webhook_max_attempts:
        values |= {"state": DeliveryState.EXHAUSTED.value, "next_attempt_at": None}
    else:
        values["next_attempt_at"] = now + timedelta(seconds=retry_delay_s(due.attempt,
                                                                          settings))
    session.execute(update(D).where(D.id == due.id, D.attempts == due.attempt,
                                    D.state == DeliveryState.PENDING.value).values(**values))


class WebhookDeliveryPublic(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    job_id: str
    event: str
    state: DeliveryState
    attempts: int
    # The last attempt's HTTP status (null: no answer) and what went wrong, if anything.
    status_code: int | None
    error: str | None
    last_attempt_at: Timestamp | None
    next_attempt_at: Timestamp | None
    created_at: Timestamp

    @classmethod
    def of(cls, row: WebhookDeliveryRow) -> "WebhookDeliveryPublic":
        return cls(id=row.delivery_id, job_id=row.job_id, event=row.event,
                   state=DeliveryState(row.state), attempts=row.attempts,
                   status_code=row.status_code, error=row.error,
                   last_attempt_at=row.last_attempt_at, next_attempt_at=row.next_attempt_at,
                   created_at=row.created_at)


def deliveries(session: Session, job_id: str, *, limit: int, after: str | None
               ) -> tuple[list[WebhookDeliveryRow], bool]:
    """A job's deliveries, oldest first, after the delivery `after`; (rows, has_more)."""
    stmt = select(D).where(D.job_id == job_id)
    if after is not None:
        cursor = session.scalar(select(D.id).where(D.job_id == job_id,
                                                   D.delivery_id == after))
        if cursor is None:
            return [], False
        stmt = stmt.where(D.id > cursor)
    rows = list(session.scalars(stmt.order_by(D.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
