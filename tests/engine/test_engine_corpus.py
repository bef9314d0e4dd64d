"""Corpus reading: formats, blank lines, and CorpusError messages for unusable files."""

from __future__ import annotations

import gzip
import json

import pytest

from workers.engine import CorpusError, prepare_data
from workers.engine.corpus_reader import iter_documents


def test_reads_all_formats(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfone\r\n\n   \ntwo\n")
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(b"one\n\ntwo")
    lines = [json.dumps({"text": "one", "id": 1}), "", json.dumps({"text": "two"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines), encoding="utf-8")
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines))
    for fmt in ("txt", "txt.gz", "jsonl", "jsonl.gz"):
        assert list(iter_documents(str(tmp_path / f"a.{fmt}"), fmt)) == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("empty.txt", b"", "txt", "no documents"),
        ("blank.txt", b"\n  \n\t\n\n", "txt", "no documents"),
        ("bad.txt", b"fine\nbad \xff\xfe byte\n", "txt", "line 2 is not valid UTF-8"),
        ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "jsonl", 'line 2 must be a JSON'),
        ("notobj.jsonl", b'{"text": "ok"}\n\n["x"]\n', "jsonl", "line 3 must be a JSON"),
        ("badjson.jsonl", b'{"text": "ok"\n', "jsonl", "line 1 is not valid JSON"),
        ("notgzip.txt.gz", b"plain text\n", "txt.gz", "not a valid gzip file"),
    ],
)
def test_unusable_corpus_raises_corpus_error(tmp_path, reporter, make_config, name, content,
                                             fmt, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        prepare_data(make_config(), str(path), fmt, str(tmp_path / "data"), reporter)


def test_too_small_corpus_says_how_many_tokens(tmp_path, reporter, make_config):
    path = tmp_path / "small.txt"
    path.write_text("a few words only\nand another short line\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"it has \d+ tokens, but at least 124 are needed"):
        prepare_data(make_config(), str(path), "txt", str(tmp_path / "data"), reporter)
