"""Per-owner storage quotas: what an owner keeps may not pass CLOZE_STORAGE_QUOTA_BYTES.
It counts datasets and models (as the API reports their bytes), the checkpoints of the
owner's jobs and the token shards stored for the owner's datasets (the bytes their
workers recorded). Checked before an upload or an import is recorded, when a job is
admitted and before each checkpoint or set of token shards is stored
(checkpoint_quota.py); nothing is stored when it would pass the quota."""

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.domain.refusals import TooLarge
from service.domain.tables import CheckpointRow, DatasetRow, JobRow, ModelRow, TokenizedRow
from service.settings import Settings

# What a full quota asks the owner to delete.
DELETABLE = "datasets, models or finished jobs' checkpoints you no longer need"


def used_bytes(session: Session, owner: str) -> int:
    datasets = session.scalar(select(func.coalesce(func.sum(DatasetRow.bytes), 0))
                              .where(DatasetRow.owner == owner))
    models = session.scalar(select(func.coalesce(func.sum(ModelRow.bytes), 0))
                            .where(ModelRow.owner == owner))
    checkpoints = session.scalar(
        select(func.coalesce(func.sum(CheckpointRow.bytes), 0))
        .join(JobRow, JobRow.id == CheckpointRow.job_id).where(JobRow.owner == owner))
    tokenized = session.scalar(
        select(func.coalesce(func.sum(TokenizedRow.bytes), 0))
        .join(DatasetRow, DatasetRow.id == TokenizedRow.dataset_id)
        .where(DatasetRow.owner == owner))
    return sum(int(n or 0) for n in (datasets, models, checkpoints, tokenized))


def record_tokenized(session: Session, *, prefix: str, dataset_id: str, size: int) -> None:
    """Count the token shards stored under prefix for the dataset (once: a second job that
    stored the same shards, or adopts them, finds them counted). Alone in its session: a
    record that loses a race is rolled back."""
    if session.get(TokenizedRow, prefix) is not None:
        return
    session.add(TokenizedRow(prefix=prefix, dataset_id=dataset_id, bytes=size))
    try:
        session.flush()
    except IntegrityError:  # counted by another job meanwhile, or the dataset is gone
        session.rollback()


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
                    f"({used} in use); delete {DELETABLE}", "file")


def full_for_jobs(quota: int, used: int) -> TooLarge:
    """No room is left for the model a new job would publish."""
    return TooLarge("storage_quota_exceeded",
                    f"your storage quota of {quota} bytes is used up ({used} in use), so the "
                    f"model this job would make could not be kept; delete {DELETABLE}")


def check(session: Session, owner: str, settings: Settings, adding: int) -> None:
    """Refuse (TooLarge) if storing `adding` more bytes would pass the owner's quota."""
    quota = settings.storage_quota_bytes
    if not quota:
        return
    used = used_bytes(session, owner)
    if used + adding > quota:
        raise exceeded(quota, used, adding)
