"""Signed webhooks: each status change of a job with a webhook becomes a delivery row,
written in the transaction that changes the status (an outbox: no change without its
delivery, no delivery without its change); senders (service/webhook_sender.py) claim due
deliveries, POST them and record how each attempt went.

A job's deliveries go out in the order of its status changes: one waits while an earlier
one of the same job is still pending (being sent or waiting for a retry).
"""

import hashlib
import hmac
import ipaddress
import itertools
import json
import socket
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased

from service.db import rowcount
from service.domain.ids import new_id
from service.domain.refusals import Invalid
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


# IPv6 forms that carry an IPv4 address a translator or relay may deliver to: such an
# address is only as public as the IPv4 address inside it (Python calls
# [64:ff9b::7f00:1] global, and it reaches 127.0.0.1 through a NAT64 gateway).
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052, the well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, any layout


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (6to4, Teredo's server and client,
    NAT64, IPv4-compatible)."""
    found = [v4 for v4 in (ip.sixtofour, *(ip.teredo or ())) if v4 is not None]
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_global(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local IPv6's %scope
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_global(str(ip.ipv4_mapped))  # ::ffff:127.0.0.1 reaches 127.0.0.1
        if ip in _NAT64_LOCAL or not all(_is_global(str(v4)) for v4 in _embedded_ipv4(ip)):
            return False
    return ip.is_global and not ip.is_multicast


def ascii_host(url: str) -> str:
    """The URL's host as it goes on the wire (IDNA for a non-ASCII name, lower case, no
    brackets around an IPv6 address); UnsafeTarget for a host no DNS name can have
    (`a..b`: an empty label)."""
    try:
        host = urlsplit(url).hostname or ""
        return host if ":" in host else host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        raise UnsafeTarget("the host is not a valid name") from None


def destination(url: str) -> str:
    """What the sender bounds its attempts in flight by: the URL's host."""
    try:
        return ascii_host(url)
    except UnsafeTarget:
        return ""


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to; UnsafeTarget when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget(f"{host} does not resolve") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refuse_non_global(host: str, addresses: list[str]) -> None:
    """UnsafeTarget naming the first of `host`'s addresses that is not global (private,
    loopback, link-local, reserved, an IPv6 form carrying one of those, ...)."""
    for address in addresses:
        if not _is_global(address):
            raise UnsafeTarget(f"{host} resolves to {address}, a private, loopback, "
                               "link-local or otherwise non-public address")


def global_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them global (public); else UnsafeTarget."""
    addresses = resolve(host, port)
    refuse_non_global(host, addresses)
    return addresses


def check_target(url: str, settings: Settings) -> None:
    """Refuse (Invalid, 422) a webhook URL whose host is no valid name (whatever the
    address policy: it could never be sent), or that reaches non-public addresses unless
    the settings allow them. Resolves the host: call it off the event loop."""
    try:
        host = ascii_host(url)
    except UnsafeTarget as exc:
        raise Invalid("invalid_request", f"webhook.url: {exc}", "webhook.url") from None
    if settings.webhook_private_addresses:
        return
    parts = urlsplit(url)
    try:
        global_addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
    except UnsafeTarget as exc:
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
    owner: str  # the job's

    @property
    def destination(self) -> str:
        return destination(self.url)


# Due deliveries looked at per query while the ones found are all held back.
CANDIDATES_PER_PAGE = 50


def claim_next(session: Session, *, now: datetime, lease_s: float,
               busy_owners: Collection[str] = (), busy_hosts: Collection[str] = (),
               ) -> Due | None:
    """Claim the oldest due delivery (committed) whose job's owner is not in busy_owners
    and whose URL's host is not in busy_hosts (the sender's bounds on attempts in flight),
    or None when none is. The claim is a conditional UPDATE on the attempt count, so of
    several senders one wins; it holds the delivery for lease_s, after which another
    sender retries it (its sender died)."""
    earlier_pending = exists().where(_Earlier.job_id == D.job_id, _Earlier.id < D.id,
                                     _Earlier.state == DeliveryState.PENDING.value)
    url = JobRow.spec["webhook"]["url"].as_string()
    stmt = (select(D.id, D.attempts, url).join(JobRow, JobRow.id == D.job_id)
            .where(D.state == DeliveryState.PENDING.value, D.next_attempt_at <= now,
                   ~earlier_pending)
            .order_by(D.next_attempt_at, D.id).limit(CANDIDATES_PER_PAGE))
    if busy_owners:
        stmt = stmt.where(JobRow.owner.not_in(list(busy_owners)))
    # Hosts are inside the spec's JSON: skipped here, a page at a time, so a busy host's
    # many due deliveries never hide another host's behind them.
    for offset in itertools.count(0, CANDIDATES_PER_PAGE):
        candidates = session.execute(stmt.offset(offset)).all()
        for delivery, attempts, target in candidates:
            if busy_hosts and destination(target or "") in busy_hosts:
                continue
            claimed = session.execute(update(D).where(
                D.id == delivery, D.state == DeliveryState.PENDING.value,
                D.attempts == attempts,
            ).values(attempts=attempts + 1, last_attempt_at=now,
                     next_attempt_at=now + timedelta(seconds=lease_s)))
            if rowcount(claimed) != 1:
                continue  # another sender took it
            session.commit()
            row, spec, owner = session.execute(
                select(D, JobRow.spec, JobRow.owner).join(JobRow, JobRow.id == D.job_id)
                .where(D.id == delivery)).one()
            hook = spec["webhook"]
            return Due(id=row.id, delivery_id=row.delivery_id, event=row.event,
                       body=row.body, attempt=row.attempts, url=hook["url"],
                       secret=hook["secret"], private_ok=row.private_ok, owner=owner)
        if len(candidates) < CANDIDATES_PER_PAGE:
            return None
    return None  # not reached: the pages end


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
