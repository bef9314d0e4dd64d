"""API keys: random secrets shown once, stored as SHA-256 (they carry 256 bits of entropy,
so a fast hash is enough; nobody can brute-force them)."""

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.ids import new_id
from service.domain.tables import LOCAL_OWNER, ApiKeyRow, utcnow

KEY_PREFIX = "cloze_sk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an owner, and whether they may see every owner's objects."""

    owner: str
    admin: bool = False
    key_id: str | None = None

    @property
    def scope(self) -> str | None:
        """The owner to filter by, or None for an admin (sees all)."""
        return None if self.admin else self.owner


ANONYMOUS = Principal(owner=LOCAL_OWNER)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(*, session: Session, owner: str, name: str = "", admin: bool = False
           ) -> tuple[ApiKeyRow, str]:
    """A new key; returns the row and the secret, which is never stored or shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(id=new_id("key"), owner=owner, name=name or owner, prefix=secret[:13],
                    sha256=_digest(secret), is_admin=admin)
    session.add(row)
    session.flush()
    return row, secret


def looks_like_key(secret: str) -> bool:
    """A Cloze key by its form (not whether it is valid): other services' tokens are not."""
    return secret.startswith(KEY_PREFIX)


def authenticate(*, session: Session, secret: str) -> Principal | None:
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.sha256 == _digest(secret),
                                                 ApiKeyRow.revoked_at.is_(None)))
    if row is None:
        return None
    return Principal(owner=row.owner, admin=row.is_admin, key_id=row.id)


def revoke(*, session: Session, key_id: str) -> bool:
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def list_(*, session: Session) -> list[ApiKeyRow]:
    return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))
