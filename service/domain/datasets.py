"""Datasets: uploaded corpora, streamed to object storage and checked on the way."""

from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobspec import formats
from jobspec.formats import KIND_HOLDS, TEXT, DatasetKind
from jobspec.names import MAX_NAME_CHARS, problem
from service.domain import admission, lifecycle, quotas
from service.domain.ids import new_id
from service.domain.pagination import newest_first, owned
from service.domain.refusals import Conflict, Invalid, not_found
from service.domain.schemas import Timestamp
from service.domain.tables import DatasetRow
from service.domain.upload_inspection import CorpusInspector, CorpusRejected, format_of
from service.settings import Settings
from service.storage import ObjectStore


class Column(BaseModel):
    name: str
    type: str = Field(description="string, integer, number, boolean, list or other")


class DatasetPublic(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    format: str
    bytes: int
    sha256: str
    documents: int
    kind: DatasetKind = Field(description="what the data holds (jobspec/formats.py)")
    labels: list[str] | None = Field(
        description="the label set, or for tagged tokens the tag set: the values of tag_column")
    splits: dict[str, int] | None
    # CoNLL column files only (else null): shown so that a wrong tag column is seen at once.
    columns: int | None = Field(None, description="columns per token line")
    tag_column: int | None = Field(
        None, description="the column read as tags, counted from 0 (column 0 holds the tokens)")
    column_samples: list[list[str]] | None = Field(
        None, description="the first few distinct values of each column")
    fields: list[Column] | None = Field(
        None, description="tables (CSV, TSV, Parquet): the columns and their types, in file "
        "order; a fine-tuning job's \"columns\" names which is read as what")
    created_at: Timestamp

    @classmethod
    def of(cls, row: DatasetRow) -> "DatasetPublic":
        return cls(id=row.id, name=row.name, format=row.format, bytes=row.bytes,
                   sha256=row.sha256, documents=row.documents, kind=row.kind,
                   labels=row.labels, splits=row.splits, columns=row.column_count,
                   tag_column=row.tag_column, column_samples=row.column_samples,
                   fields=row.fields, created_at=row.created_at)


class DatasetUpload:
    """Receives one uploaded file chunk by chunk: checks it and writes it to storage."""

    def __init__(self, *, filename: str, store: ObjectStore, settings: Settings,
                 tag_column: int | None = None, room: int | None = None) -> None:
        if len(filename) > MAX_NAME_CHARS:  # it names the dataset when no name is given
            raise Invalid("invalid_request", f"file: the file name is longer than "
                          f"{MAX_NAME_CHARS} characters", "file")
        if (why := problem(filename)) is not None:  # so the name rule holds for it too
            raise Invalid("invalid_request", f"file: the file name {why}", "file")
        self.format = format_of(filename)
        self.inspector = CorpusInspector(
            self.format, max_bytes=settings.max_upload_bytes,
            max_uncompressed=settings.max_uncompressed_bytes,
            max_line_bytes=settings.max_jsonl_line_bytes, tag_column=tag_column,
            max_ratio=settings.max_compression_ratio)
        self.id = new_id("ds")
        self.filename = filename
        # The key keeps the name's extension; the recorded format says what the content is.
        self.key = f"datasets/{self.id}/corpus.{self.format}"
        self.store = store
        self.settings = settings
        self.room = room  # bytes the owner's storage quota leaves; None: no quota
        self._out = store.open_write(self.key)

    def write(self, chunk: bytes) -> None:
        try:
            self.inspector.feed(chunk)
        except CorpusRejected:
            self.abort()
            raise
        if self.room is not None and self.inspector.bytes > self.room:
            self.abort()
            quota = self.settings.storage_quota_bytes
            raise quotas.exceeded(quota, quota - self.room, self.inspector.bytes)
        self._out.write(chunk)

    def request_tag_column(self, tag_column: int | None) -> None:
        """A tag column named after the file started (a form field after the file part)."""
        try:
            self.inspector.request_tag_column(tag_column)
        except CorpusRejected:
            self.abort()
            raise

    def abort(self) -> None:
        self._out.close()
        self.inspector.close()
        self.store.delete_prefix(f"datasets/{self.id}")  # its folder too, not an empty one

    def finish(self) -> None:
        """The last chunk was written: check the whole file, then close the object."""
        try:
            self.inspector.finish()
        except CorpusRejected:
            self.abort()
            raise
        finally:
            self.inspector.close()
        self._out.close()

    def record(self, *, session: Session, owner: str, name: str | None) -> DatasetRow:
        found = self.inspector
        row = DatasetRow(id=self.id, owner=owner, name=name or self.filename,
                         format=found.fmt, bytes=found.bytes, sha256=found.sha256,
                         documents=found.documents, kind=found.kind or TEXT,
                         labels=sorted(found.labels) or None, splits=found.splits or None,
                         column_count=found.columns, tag_column=found.tag_column,
                         column_samples=found.column_samples, fields=found.fields,
                         profile=found.profile, storage_key=self.key)
        session.add(row)
        session.flush()
        return row


def get(*, session: Session, dataset_id: str, scope: str | None) -> DatasetRow:
    """The dataset if `scope` may see it; another owner's id is as unknown as a made-up one."""
    row = session.get(DatasetRow, dataset_id)
    if row is None or (scope is not None and row.owner != scope):
        raise not_found("dataset", dataset_id)
    return row


def list_(*, session: Session, scope: str | None, limit: int, after: str | None
          ) -> tuple[list[DatasetRow], bool]:
    return newest_first(session, owned(select(DatasetRow), DatasetRow, scope), DatasetRow,
                        limit=limit, after=after, scope=scope)


DATA_FIELDS = ("dataset_id", "validation_dataset_id", "test_dataset_id")  # in a job's spec
TEXT_ROLES = ("text", "text_pair", "question", "context")  # roles read as text
LABEL_ROLES = ("label", "labels", "tags")  # roles whose values are a job's label set


def read_as(row: DatasetRow, kind: str, columns: dict[str, str] | None, *, param: str,
            task: str) -> list[str] | None:
    """Check that a job (`task`, reading data of `kind`) can read the dataset through its
    `columns` map, and return the label set it will find (None: unknown, or not labels).

    A table (CSV, TSV, Parquet) is read through the map, each role it leaves out from the
    column named for it (formats.role_columns): every role the kind reads needs a column,
    text roles a column of text, label roles one that can hold labels. Other datasets must
    hold the kind, and take no map. Refusals name `param` (the dataset's field) or
    columns.<role>."""
    fmt = formats.FORMATS.get(row.format)
    if fmt is None or not fmt.table:
        if columns:
            raise Invalid("invalid_request", f"columns: a columns map is for tables (CSV, TSV, "
                          f"Parquet); {row.id} is {row.format}, whose fields have fixed "
                          "names", "columns")
        if row.kind != kind:
            raise Invalid("invalid_request", f"{param}: {task} needs {KIND_HOLDS[kind]}; "
                          f"{row.id} holds {row.kind.replace('_', ' ')}", param)
        return row.labels
    if kind not in fmt.holds:
        raise Invalid("invalid_request", f"{param}: {task} needs {KIND_HOLDS[kind]}; a "
                      f"{fmt.name} table cannot hold it", param)
    types = {f["name"]: f["type"] for f in row.fields or ()}
    has = ", ".join(repr(name) for name in types)
    try:
        roles = formats.role_columns(types, columns)
    except formats.NoColumn as exc:
        raise Invalid("invalid_request", f"columns.{exc.role}: {row.id} has no column "
                      f"{(columns or {})[exc.role]!r}; its columns are {has}",
                      f"columns.{exc.role}") from None
    profile = (row.profile or {}).get("columns", {})
    labels: list[str] | None = None
    for role in (*formats.KIND_ROLES.get(kind, ()), *formats.OPTIONAL_ROLES.get(kind, ())):
        column = roles.get(role)
        if column is None:
            if role not in formats.KIND_ROLES.get(kind, ()):
                continue  # an optional role (a text's pair)
            raise Invalid("invalid_request", f"columns.{role}: {task} reads a {role!r} from "
                          f"each row, and no column of {row.id} is named for it; name it in "
                          f"columns.{role} (its columns are {has})", f"columns.{role}")
        found = types.get(column)
        if role in TEXT_ROLES and found != "string":
            raise Invalid("invalid_request", f"columns.{role}: column {column!r} of {row.id} "
                          f"holds {found} values, not text", f"columns.{role}")
        if role in LABEL_ROLES:
            seen = profile.get(column, {})
            if task == "regression":
                if found not in ("integer", "number"):
                    raise Invalid("invalid_request", f"columns.{role}: regression needs a "
                                  f"number in column {column!r}; it holds {found} values",
                                  f"columns.{role}")
                continue
            if seen.get("values") is None:
                why = seen.get("not_labels") or "its values are not labels"
                raise Invalid("invalid_request", f"columns.{role}: column {column!r} of "
                              f"{row.id} cannot hold labels: {why}", f"columns.{role}")
            labels = sorted(seen["values"])
    return labels


def delete(*, session: Session, store: ObjectStore, dataset_id: str, scope: str | None) -> None:
    """Delete the dataset with its corpus and everything made from it: the token shards
    and tokenizers that pretraining jobs prepared (tokenized/<id>/...). A dataset a queued or
    running job reads is refused with 409: deleting it would fail the job, or leave shards
    the job writes later behind with no dataset to delete them with."""
    row = get(session=session, dataset_id=dataset_id, scope=scope)
    admission.hold(session, row.owner)  # a job submitted meanwhile is found, or finds it gone
    busy = lifecycle.active_job_naming(session, row.owner, row.id, DATA_FIELDS)
    if busy:
        raise Conflict("conflict", f"dataset {dataset_id} is in use by job {busy}; "
                       "cancel it or wait until it ends")
    session.delete(row)
    session.commit()  # the record goes first: a failed commit must not lose the file
    store.delete_prefix(f"datasets/{dataset_id}")
    store.delete_prefix(f"tokenized/{dataset_id}")
