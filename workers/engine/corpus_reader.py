"""Streaming reader for corpus files: one document per line, as plain text or JSON lines,
or one per row of a table's text column (jobspec/formats.py says what a text record is)."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator

from jobspec import formats
from workers.engine.failures import CorpusError
from workers.engine.table_rows import open_table, table_roles

CORPUS_FORMATS = formats.formats_holding(formats.TEXT)  # what a pretraining corpus may be
_BOM = b"\xef\xbb\xbf"


def _open(path: str, corpus_format: str) -> gzip.GzipFile | io.BufferedReader:
    if corpus_format not in CORPUS_FORMATS:
        raise CorpusError(f"unsupported corpus format {corpus_format!r}; "
                          f"use one of {CORPUS_FORMATS}")
    # Binary mode: we split on b"\n" only and decode each line ourselves to report bad lines.
    if formats.FORMATS[corpus_format].gzip:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _parse_json_line(line: str, lineno: int) -> str | None:
    """The document of a JSON line; None if its text is blank."""
    try:
        document = formats.document(formats.json_record(line))
    except formats.FormatError as exc:
        if exc.rule in (formats.NOT_AN_OBJECT, formats.NO_TEXT):  # worded so since before
            raise CorpusError(
                f'line {lineno} must be a JSON object with a string "text" field') from None
        raise CorpusError(exc.at(lineno)) from None
    return None if document is None else document.text


def _table_documents(path: str, corpus_format: str, columns: dict[str, str] | None
                     ) -> Iterator[str]:
    """The texts of a table's text column (the job's columns["text"], else the column named
    text, sentence, ...), row by row."""
    table = open_table(path, corpus_format, "the corpus")
    roles = table_roles(table, columns, "the corpus")
    if "text" not in roles:
        raise CorpusError(f"the corpus has no text column: name it in columns.text (its "
                          f"columns are {', '.join(table.header)})")
    for number, row in table.rows:
        try:
            document = formats.read_row(formats.TEXT, row, {"text": roles["text"]})
        except formats.FormatError as exc:
            raise CorpusError(exc.at(number, where="the corpus", unit="row")) from None
        if document is not None and isinstance(document, formats.Document) and \
                document.text.strip():
            yield document.text


def iter_documents(path: str, corpus_format: str, columns: dict[str, str] | None = None
                   ) -> Iterator[str]:
    """Yield the non-blank documents of the corpus in file order, streaming; columns: a
    table's text column ({"text": name}; None: the column named for it)."""
    if corpus_format in CORPUS_FORMATS and formats.FORMATS[corpus_format].table:
        yield from _table_documents(path, corpus_format, columns)
        return
    try:
        with _open(path, corpus_format) as fh:
            is_json = formats.FORMATS[corpus_format].layout == "json"
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1:
                    raw = raw.removeprefix(_BOM)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"line {lineno} is not valid UTF-8 (bad byte at column {exc.start + 1}); "
                        "save the corpus as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                text = _parse_json_line(line, lineno) if is_json else line.rstrip("\r\n")
                if text is not None and text.strip():
                    yield text
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(f"the corpus is not a valid gzip file ({exc})") from None
