"""The upload inspector: the same verdict however the bytes are split into chunks."""

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.upload_inspection import CorpusInspector, CorpusRejected, format_of
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
        format_of("a.xlsx")
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


def test_real_labelled_sets():
    spam = inspect((DATA / "spamassassin-sample.jsonl.gz").read_bytes(), "jsonl.gz")
    assert spam.kind == "labelled_text" and spam.labels == {"spam", "ham"}
    assert spam.documents == 1200
    assert spam.splits == {"train": 700, "valid": 180, "test": 320}
    brown = inspect((DATA / "brown-valid.conll.gz").read_bytes(), "conll.gz")
    assert brown.kind == "tagged_tokens" and len(brown.labels) > 50


# -- Column files by their content


def conll_sentences(n: int) -> bytes:
    """n sentences of token TAB POS TAB NER, about 60 bytes each."""
    words = [("Peter", "NNP", "B-PER"), ("visits", "VBZ", "O"), ("Paris", "NNP", "B-LOC"),
             (".", ".", "O")]
    return "".join("".join(f"{w}{i % 7}\t{p}\t{t}\n" for w, p, t in words) + "\n"
                   for i in range(n)).encode()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200_000), max_size=6))
def test_columns_found_however_the_bytes_are_cut(cuts):
    big = conll_sentences(3000)  # ~180 KB: past the first lines the decision is made on
    found = inspect(big, "txt", cuts)
    assert (found.fmt, found.kind, found.documents) == ("conll", "tagged_tokens", 3000)
    assert (found.columns, found.tag_column, found.labels) == (3, 2, {"B-PER", "B-LOC", "O"})
    prose = ("a line of prose with some words\nand another, longer line of prose here\n"
             * 3000).encode()
    found = inspect(prose, "txt", cuts)
    assert (found.fmt, found.kind, found.documents) == ("txt", "text", 6000)
    assert found.columns is None and found.column_samples is None


def test_many_short_lines_are_judged_by_the_first_thousand():
    lines = b"".join(b"w%d\tnn\n" % i + (b"\n" if i % 9 == 0 else b"") for i in range(3000))
    found = inspect(lines, "txt")
    assert found.kind == "tagged_tokens" and found.labels == {"nn"}
    found = inspect(b"Huge " * 100_000 + b"\nsecond line\n", "txt")  # no line in the sample
    assert (found.kind, found.documents) == ("text", 2)


def test_a_line_out_of_step_is_named():
    # Within the first lines it makes the file plain text; past them it is an error.
    assert inspect(conll_sentences(2) + b"broken\tNN\n", "txt").kind == "text"
    with pytest.raises(CorpusRejected) as exc:
        inspect(conll_sentences(300) + b"broken\tNN\n", "txt")
    assert exc.value.message.startswith("line 1501: 2 columns where the lines before have 3")
    assert "read as CoNLL" in exc.value.message
    with pytest.raises(CorpusRejected) as exc:
        inspect(conll_sentences(2) + b"broken\tNN\n", "conll")
    assert exc.value.message == "line 11: 2 columns where the lines before have 3"


def test_a_named_tag_column_vouches_for_columns():
    data = b"hello world\ngood morning\n"
    assert inspect(data, "txt").kind == "text"
    found = CorpusInspector("txt", max_bytes=10**6, max_uncompressed=10**6,
                            max_line_bytes=10**6, tag_column=1)
    found.feed(data)
    found.finish()
    assert (found.kind, found.fmt, found.labels) == ("tagged_tokens", "conll",
                                                     {"world", "morning"})
    found = CorpusInspector("txt", max_bytes=10**6, max_uncompressed=10**6,
                            max_line_bytes=10**6, tag_column=1)
    found.feed(b"one two\nthree four five\n")
    with pytest.raises(CorpusRejected) as exc:
        found.finish()
    assert exc.value.param == "tag_column" and "line 2 has 3 columns" in exc.value.message


def test_a_column_of_words_is_not_a_tag_set():
    words = "".join(f"w{i}\tx{i}\n" for i in range(1001)).encode()
    with pytest.raises(CorpusRejected) as exc:
        inspect(words, "conll")
    assert "more than 1000 distinct values" in exc.value.message


def test_a_byte_order_mark_is_not_data():
    conll = "\ufeff-DOCSTART- -X- O\n\nEU NNP B-ORG\nsays VBZ O\n\nHe PRP O\nis VBZ O\n"
    found = inspect(conll.encode(), "txt", [1, 2])  # the mark cut across chunks, too
    assert (found.kind, found.documents, found.column_samples[0]) == (
        "tagged_tokens", 2, ["EU", "says", "He", "is"])
    assert inspect('\ufeff{"text": "a", "label": "x"}\n'.encode(), "jsonl").labels == {"x"}
