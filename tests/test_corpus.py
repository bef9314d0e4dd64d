"""The upload inspector: the same verdict however the bytes are split into chunks."""

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.corpus import CorpusInspector, CorpusRejected, format_of
from tests.stack import DATA


def inspect(data: bytes, fmt: str, cuts: list[int] | None = None) -> CorpusInspector:
    inspector = CorpusInspector(fmt, max_bytes=10**9, max_uncompressed=10**9,
                                max_line_bytes=10**6)
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts or [])})
    for a, b in zip(edges, edges[1:], strict=False):
        inspector.feed(data[a:b])
    inspector.finish()
    return inspector


TEXT = "第一行 文本\nsecond line, café\n\n  \nthird\n".encode()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_chunking_never_changes_the_verdict(cuts):
    assert inspect(TEXT, "txt", cuts).documents == 3
    assert inspect(gzip.compress(TEXT), "txt.gz", cuts).documents == 3
    jsonl = b'{"text": "a", "label": "x"}\n{"text": "b", "label": 2, "split": "test"}\n'
    found = inspect(jsonl, "jsonl", cuts)
    assert (found.kind, found.labels, found.splits) == ("labelled_text", {"x", "2"},
                                                        {"train": 1, "test": 1})


def test_formats_and_kinds():
    assert format_of("a.CONLL.gz") == "conll.gz"
    with pytest.raises(CorpusRejected):
        format_of("a.csv")
    conll = b"# doc = 1\nThe\tat\nCat\tnn\n\nRuns\tvb\n"
    found = inspect(conll, "conll")
    assert (found.kind, found.documents, found.labels) == ("tagged_tokens", 2, {"at", "nn", "vb"})
    tagged = b'{"tokens": ["a", "b"], "tags": ["B-X", "O"]}\n'
    assert inspect(tagged, "jsonl").kind == "tagged_tokens"
    assert inspect(b"plain\n", "txt").kind == "text"


@pytest.mark.parametrize(("data", "fmt", "says"), [
    (b'{"tokens": ["a"], "tags": []}\n', "jsonl", "equal length"),
    (b'{"text": "a", "label": "x"}\n{"text": "b"}\n', "jsonl", "label"),
    (b'{"text": "a"}\n{"tokens": ["a"], "tags": ["O"]}\n', "jsonl", "record among"),
    (b'{"text": "a", "split": "dev2"}\n', "jsonl", "split"),
    (b"token-without-tag\n", "conll", "tag column"),
])
def test_bad_labelled_data(data, fmt, says):
    with pytest.raises(CorpusRejected) as exc:
        inspect(data, fmt)
    assert says in exc.value.message


def test_shared_labelled_sets():
    spam = inspect((DATA / "en/cls/spamassassin.jsonl.gz").read_bytes(), "jsonl.gz")
    assert spam.kind == "labelled_text" and spam.labels == {"spam", "ham"}
    assert spam.documents == 5916 and set(spam.splits) == {"train", "valid", "test"}
    brown = inspect((DATA / "en/pos/brown-valid.conll.gz").read_bytes(), "conll.gz")
    assert brown.kind == "tagged_tokens" and len(brown.labels) > 50
