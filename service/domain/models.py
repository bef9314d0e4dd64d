"""Models: exports of finished jobs, kept as a Hugging Face directory plus an archive."""

from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain.pagination import newest_first, owned
from service.domain.schemas import Timestamp
from service.domain.tables import ModelRow
from service.errors import not_found


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
                        limit=limit, after=after)
