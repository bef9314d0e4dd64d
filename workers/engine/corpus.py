"""Streaming reader for corpus files: one document per line, as plain text or JSON lines."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator

from workers.engine.errors import CorpusError

FORMATS = ("txt", "txt.gz", "jsonl", "jsonl.gz")
_BOM = b"\xef\xbb\xbf"


def _open(path: str, corpus_format: str) -> gzip.GzipFile | io.BufferedReader:
    if corpus_format not in FORMATS:
        raise CorpusError(f"unsupported corpus format {corpus_format!r}; use one of {FORMATS}")
    # Binary mode: we split on b"\n" only and decode each line ourselves to report bad lines.
    if corpus_format.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _parse_json_line(line: str, lineno: int) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"line {lineno} is not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise CorpusError(
            f'line {lineno} must be a JSON object with a string "text" field'
        )
    return obj["text"]


def iter_documents(path: str, corpus_format: str) -> Iterator[str]:
    """Yield the non-blank documents of the corpus in file order, streaming."""
    is_json = corpus_format.startswith("jsonl")
    try:
        with _open(path, corpus_format) as fh:
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
                if text.strip():
                    yield text
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(f"the corpus is not a valid gzip file ({exc})") from None
