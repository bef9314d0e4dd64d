"""The rows of a table file (CSV, TSV, Parquet) as dicts by column name: the engine's one
reader per table layout (jobspec/formats.py FORMATS), for fine-tuning records
(finetune/records.py) and pretraining text (corpus_reader.py). The API's upload check reads
the same layouts with the same rules (formats.delimited_rows, table_header, table_row): a TSV
as its upload found it, linear ("tsv") or with quoted fields ("tsv-quoted"), by its format.

Streaming: delimited text a record at a time; Parquet a batch of rows at a time."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jobspec import formats
from jobspec.formats import FormatError
from workers.engine.failures import CorpusError

PARQUET_BATCH_ROWS = 1024


@dataclass
class Table:
    """A table file opened: its column names, and its rows as (row number, dict) (rows
    counted from 1 after the header), read as they are iterated."""

    header: list[str]
    rows: Iterator[tuple[int, dict[str, Any]]]


def open_table(path: str, fmt: str, where: str) -> Table:
    """The table in `path`, stored as format `fmt`; `where` names it in errors."""
    layout = formats.FORMATS[fmt].layout
    if layout == "delimited":
        return _delimited(path, fmt, where)
    if layout == "parquet":
        return _parquet(path, where)
    raise CorpusError(f"{where}: {fmt} is not a table")


def _delimited(path: str, fmt: str, where: str) -> Table:
    file_format = formats.FORMATS[fmt]
    try:
        raw: Any = gzip.open(path, "rb") if file_format.gzip else open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{where} file not found") from None
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    records = formats.delimited_rows(text, file_format)

    def read() -> Iterator[tuple[int, list[str]]]:
        try:
            yield from records
        except FormatError as exc:
            raise CorpusError(f"{where}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{where} is not valid UTF-8 ({exc.reason})") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise CorpusError(f"{where} is not a valid gzip file ({exc})") from None

    lines = read()
    first = next(lines, None)
    if first is None:
        text.close()
        raise CorpusError(f"{where} is empty: a table needs a header row")
    try:
        header = formats.table_header(first[1])
    except FormatError as exc:
        text.close()
        raise CorpusError(exc.at(first[0], where=where)) from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with text:
            for number, (line, values) in enumerate(lines, start=1):
                try:
                    yield number, formats.table_row(header, values)
                except FormatError as exc:
                    raise CorpusError(f"{exc.at(number, where=where, unit='row')} "
                                      f"(line {line})") from None

    return Table(header, rows())


def _parquet(path: str, where: str) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        header = formats.table_header(list(parquet.schema_arrow.names))
    except FormatError as exc:
        raise CorpusError(f"{where}: {exc}") from None
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{where} is not a Parquet file ({exc})") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except (pa.ArrowException, OSError) as exc:
            raise CorpusError(f"{where}: the Parquet file is damaged near row {number + 1} "
                              f"({exc})") from None
        finally:
            parquet.close()

    return Table(header, rows())


def table_roles(table: Table, columns: dict[str, str] | None, where: str) -> dict[str, str]:
    """Role -> column of this table, as the job's columns map (or the columns' names) say."""
    try:
        return formats.role_columns(table.header, columns)
    except formats.NoColumn as exc:
        raise CorpusError(f"{where}: columns.{exc.role}: {exc}") from None
