"""A dataset's preview (GET /v1/datasets/{id}/preview): its first records, read from the
stored file by the layout's row reader, and per column its type, a text-length histogram
and a label histogram, from the profile its upload's inspection stored.

Bounded: at most `limit` records (MAX_PREVIEW_RECORDS), at most PREVIEW_BYTES of text read,
each cell cut to PREVIEW_CELL_CHARS and each list to PREVIEW_LIST_ITEMS."""

import gzip
import io
import json
from collections.abc import Iterator
from typing import IO, Any, Literal

from pydantic import BaseModel, Field

from jobspec import formats
from service.domain.datasets import LABEL_ROLES
from service.domain.refusals import Invalid
from service.domain.tables import DatasetRow
from service.storage import ObjectStore

MAX_PREVIEW_RECORDS = 100
PREVIEW_BYTES = 4 * 1024 * 1024
PREVIEW_CELL_CHARS = 1000
PREVIEW_LIST_ITEMS = 200
MAX_TOP_LABELS = 100


class LengthHistogram(BaseModel):
    edges: list[int] = Field(description="bin i counts lengths from edges[i] up to "
                             "edges[i+1]; the last bin has no upper end")
    counts: list[int]
    count: int
    min: int
    max: int
    mean: float


class LabelCount(BaseModel):
    value: str
    count: int


class LabelHistogram(BaseModel):
    counts: list[LabelCount] = Field(description="the most frequent values, most first")
    distinct: int
    other: int = Field(description="rows (items, for a list column) holding a value not "
                       "listed in counts")


class ColumnSummary(BaseModel):
    name: str
    type: str
    role: str | None = Field(description="what a job reads it as by default (text, label, "
                             "...); a job's \"columns\" map may say otherwise")
    empty: int = Field(description="empty cells (null, or '' in CSV and TSV)")
    lengths: LengthHistogram | None = Field(
        description="text lengths in characters (items, for a list column)")
    labels: LabelHistogram | None = Field(
        description="value counts, for a column that can hold labels (at most "
        f"{formats.MAX_LABELS} distinct values of at most {formats.MAX_LABEL_CHARS} "
        "characters)")


class DatasetPreview(BaseModel):
    object: Literal["dataset.preview"] = "dataset.preview"
    dataset_id: str
    format: str
    kind: str
    rows: int | None = Field(description="records in the whole file")
    records: list[dict[str, Any]] = Field(description="the first records, as the file holds "
                                          "them (a table's rows by column name)")
    columns: list[ColumnSummary]
    truncated: bool = Field(description="a cell or a list was cut short, or the byte limit "
                            "stopped the reading")


def preview(*, row: DatasetRow, store: ObjectStore, limit: int, top: int) -> DatasetPreview:
    if not 1 <= limit <= MAX_PREVIEW_RECORDS:
        raise Invalid("invalid_request", f"limit: give 1 to {MAX_PREVIEW_RECORDS}", "limit")
    if not 1 <= top <= MAX_TOP_LABELS:
        raise Invalid("invalid_request", f"top: give 1 to {MAX_TOP_LABELS}", "top")
    reading = _Reading()
    with store.open_read(row.storage_key) as raw:
        records = [reading.cut(r) for r in _records(row, raw, limit, reading)]
    profile = row.profile or {}
    roles: dict[str, str] = {}
    if row.fields is not None:
        roles = {column: role for role, column in
                 formats.role_columns([f["name"] for f in row.fields], None).items()}
    columns = [_summary(name, seen, roles.get(name), top, profile.get("rows"))
               for name, seen in profile.get("columns", {}).items()]
    return DatasetPreview(dataset_id=row.id, format=row.format, kind=row.kind,
                          rows=profile.get("rows", row.documents), records=records,
                          columns=columns, truncated=reading.truncated)


def _summary(name: str, seen: dict[str, Any], role: str | None, top: int,
             rows: int | None) -> ColumnSummary:
    values: dict[str, int] | None = seen.get("values")
    labels = None
    # A label histogram for the columns that hold labels: read as labels, or with few
    # distinct values for their rows (a text column of short, distinct texts is not one).
    if values and (role in LABEL_ROLES or name in LABEL_ROLES or
                   len(values) <= max(2, (rows or 0) // 2)):
        ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ranked[:top]
        labels = LabelHistogram(
            counts=[LabelCount(value=v, count=c) for v, c in shown], distinct=len(values),
            other=sum(c for _, c in ranked[top:]))
    lengths = seen.get("lengths") if (labels is None or seen.get("type") == "list") else None
    return ColumnSummary(name=name, type=seen.get("type", "string"), role=role,
                         empty=seen.get("empty", 0),
                         lengths=LengthHistogram(**lengths) if lengths else None,
                         labels=labels)


class _Reading:
    """The bytes read so far, and whether anything was cut."""

    def __init__(self) -> None:
        self.chars = 0
        self.truncated = False

    def lines(self, text: IO[str]) -> Iterator[str]:
        for line in text:
            self.chars += len(line)
            if self.chars > PREVIEW_BYTES:
                self.truncated = True
                return
            yield line

    def cut(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > PREVIEW_CELL_CHARS:
            self.truncated = True
            return value[:PREVIEW_CELL_CHARS - 1] + "…"
        if isinstance(value, list):
            if len(value) > PREVIEW_LIST_ITEMS:
                self.truncated = True
            return [self.cut(v) for v in value[:PREVIEW_LIST_ITEMS]]
        if isinstance(value, dict):
            return {str(k): self.cut(v) for k, v in value.items()}
        return value


def _records(row: DatasetRow, raw: IO[bytes], limit: int, reading: _Reading
             ) -> Iterator[dict[str, Any]]:
    """The first `limit` records of the stored file, by its layout."""
    fmt = formats.FORMATS[row.format]
    if fmt.layout == "parquet":
        yield from _parquet_records(raw, limit)
        return
    binary: IO[bytes] = gzip.GzipFile(fileobj=raw) if fmt.gzip else raw  # type: ignore[assignment]
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
    if fmt.layout == "squad":
        yield from _squad_records(text, limit, reading)
        return
    lines = reading.lines(text)
    count = 0
    if fmt.layout == "delimited":
        header: list[str] | None = None
        for _, values in formats.delimited_rows(lines, fmt):
            if header is None:
                header = values
                continue
            yield dict(zip(header, values, strict=False))
            count += 1
            if count >= limit:
                return
    elif fmt.layout == "columns":
        yield from _conll_records(lines, limit, row.tag_column or 1)
    else:
        for line in lines:
            if not line.strip():
                continue
            if fmt.layout == "json":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                yield record if isinstance(record, dict) else {"value": record}
            else:
                yield {"text": line.rstrip("\r\n")}
            count += 1
            if count >= limit:
                return


def _squad_records(text: IO[str], limit: int, reading: _Reading) -> Iterator[dict[str, Any]]:
    """A SQuAD document's first questions, as flat records (formats.squad_records), from
    its first PREVIEW_BYTES characters: the walk stops where they end."""
    head = text.read(PREVIEW_BYTES + 1)
    reading.chars = len(head)
    reading.truncated = reading.truncated or len(head) > PREVIEW_BYTES
    records = formats.squad_records(head[:PREVIEW_BYTES])
    for _ in range(limit):
        try:
            yield next(records)[1]
        except (StopIteration, formats.FormatError):  # the end, or where the head is cut
            return


def _conll_records(lines: Iterator[str], limit: int, tag_column: int
                   ) -> Iterator[dict[str, Any]]:
    tokens: list[str] = []
    tags: list[str] = []
    count = 0
    for line in lines:
        try:
            columns = formats.conll_line(line, in_sentence=bool(tokens), tag_column=tag_column)
        except formats.FormatError:
            continue
        if isinstance(columns, str):
            if columns == formats.BLANK and tokens:
                yield {"tokens": tokens, "tags": tags}
                tokens, tags = [], []
                count += 1
                if count >= limit:
                    return
            continue
        tokens.append(columns[0])
        tags.append(columns[tag_column] if len(columns) > tag_column else "")
    if tokens:
        yield {"tokens": tokens, "tags": tags}


def _parquet_records(raw: IO[bytes], limit: int) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq  # noqa: PLC0415 (only for Parquet datasets)

    parquet = pq.ParquetFile(raw)
    for batch in parquet.iter_batches(batch_size=limit):
        yield from batch.to_pylist()[:limit]
        return
