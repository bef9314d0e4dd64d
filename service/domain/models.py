"""Models: exports of finished jobs, kept as a Hugging Face directory plus an archive."""

import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.errors import not_found
from service.domain.ids import new_id
from service.domain.pagination import newest_first, owned
from service.domain.schemas import Timestamp
from service.domain.tables import ModelRow
from service.storage import ObjectStore


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    job_id: str | None
    task: str
    architecture: str
    mask_token: str | None
    bytes: int
    details: dict[str, Any]
    created_at: Timestamp

    @classmethod
    def of(cls, row: ModelRow) -> "ModelPublic":
        return cls(id=row.id, name=row.name, job_id=row.job_id, task=row.task,
                   architecture=row.architecture, mask_token=row.mask_token, bytes=row.bytes,
                   details=row.details, created_at=row.created_at)


def get(*, session: Session, model_id: str, scope: str | None) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None or (scope is not None and row.owner != scope):
        raise not_found("model", model_id)
    return row


def list_(*, session: Session, scope: str | None, limit: int, after: str | None
          ) -> tuple[list[ModelRow], bool]:
    return newest_first(session, owned(select(ModelRow), ModelRow, scope), ModelRow,
                        limit=limit, after=after, scope=scope)


def publish(*, session: Session, store: ObjectStore, export_dir: Path, owner: str, name: str,
            job_id: str | None, task: str, architecture: str, mask_token: str | None,
            details: dict[str, Any]) -> ModelRow:
    """Store a model directory as files (for serving) and one archive (for download), then
    record it. The archive holds one top folder named after the model."""
    model_id = new_id("m")
    prefix = f"models/{model_id}/files"
    store.put_dir(export_dir, prefix)
    archive_key = f"models/{model_id}/{model_id}.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(export_dir, arcname=model_id)
        store.put_file(archive, archive_key)
        size = archive.stat().st_size
    row = ModelRow(id=model_id, owner=owner, name=name, job_id=job_id, task=task,
                   architecture=architecture, mask_token=mask_token, storage_prefix=prefix,
                   archive_key=archive_key, bytes=size, details=details)
    session.add(row)
    session.flush()
    return row


def delete_files(*, store: ObjectStore, model_id: str) -> None:
    store.delete_prefix(f"models/{model_id}")
