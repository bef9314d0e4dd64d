"""Per-owner storage quotas: what an owner keeps (datasets plus models, counted as the API
reports their bytes) may not pass CLOZE_STORAGE_QUOTA_BYTES. Checked before an upload or an
import is recorded; nothing is stored when it would pass the quota."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.domain.errors import TooLarge
from service.domain.tables import DatasetRow, ModelRow
from service.settings import Settings


def used_bytes(session: Session, owner: str) -> int:
    datasets = session.scalar(select(func.coalesce(func.sum(DatasetRow.bytes), 0))
                              .where(DatasetRow.owner == owner))
    models = session.scalar(select(func.coalesce(func.sum(ModelRow.bytes), 0))
                            .where(ModelRow.owner == owner))
    return int(datasets or 0) + int(models or 0)


def left(session: Session, owner: str, settings: Settings) -> int | None:
    """Bytes the owner may still store; None without a quota."""
    if not settings.storage_quota_bytes:
        return None
    return max(settings.storage_quota_bytes - used_bytes(session, owner), 0)


def exceeded(quota: int, used: int, adding: int | None = None) -> TooLarge:
    """Storing `adding` more bytes (None: any more) would pass the quota."""
    what = "any more" if adding is None else f"{adding} more bytes"
    return TooLarge("storage_quota_exceeded",
                    f"file: storing {what} would pass your storage quota of {quota} bytes "
                    f"({used} in use); delete datasets or models you no longer need", "file")


def full_for_jobs(quota: int, used: int) -> TooLarge:
    """No room is left for the model a new job would publish."""
    return TooLarge("storage_quota_exceeded",
                    f"your storage quota of {quota} bytes is used up ({used} in use), so the "
                    "model this job would make could not be kept; delete datasets or models "
                    "you no longer need")


def check(session: Session, owner: str, settings: Settings, adding: int) -> None:
    """Refuse (TooLarge) if storing `adding` more bytes would pass the owner's quota."""
    quota = settings.storage_quota_bytes
    if not quota:
        return
    used = used_bytes(session, owner)
    if used + adding > quota:
        raise exceeded(quota, used, adding)
