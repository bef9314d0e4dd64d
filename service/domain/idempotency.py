"""Idempotency-Key on creates (as Stripe does): a retried create returns the first answer;
the same key with a different request is an error, never a second object."""

import hashlib
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.domain.refusals import Conflict, Invalid
from service.domain.tables import IdempotencyRow


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


def replay(*, session: Session, owner: str, key: str | None, route: str,
           request_sha256: str) -> tuple[int, dict[str, Any]] | None:
    """The stored (status, body) for this key, or None if the key is new or absent."""
    if key is None:
        return None
    row = session.scalar(select(IdempotencyRow).where(IdempotencyRow.owner == owner,
                                                      IdempotencyRow.key == key))
    if row is None:
        return None
    if row.route != route or row.request_sha256 != request_sha256:
        raise Invalid("idempotency_key_reused",
                      "this Idempotency-Key was already used with a different request",
                      "Idempotency-Key")
    return row.status_code, row.response


def remember(*, session: Session, owner: str, key: str | None, route: str,
             request_sha256: str, status_code: int, response: dict[str, Any]) -> None:
    """Store the answer in the same transaction as the object it created."""
    if key is None:
        return
    try:
        with session.begin_nested():
            session.add(IdempotencyRow(owner=owner, key=key, route=route,
                                       request_sha256=request_sha256,
                                       status_code=status_code, response=response))
    except IntegrityError:
        # A concurrent retry with the same key won the race; this request created nothing
        # durable because its transaction is rolled back by the caller.
        raise Conflict("conflict", "a request with this Idempotency-Key is in progress; "
                       "retry it", "Idempotency-Key") from None


def forget(*, session: Session, owner: str, key: str | None) -> None:
    """Drop a stored answer whose object was rolled back (e.g. the queue was down)."""
    if key is not None:
        session.execute(delete(IdempotencyRow).where(IdempotencyRow.owner == owner,
                                                     IdempotencyRow.key == key))
