"""jobspec/formats.py's rules, read by both sides: a file the upload check accepts is one the
engine reads, each side wording a broken rule as its users have always seen it."""

from __future__ import annotations

import json

import pytest

from jobspec import formats
from service.domain.upload_inspection import CorpusInspector, CorpusRejected
from workers.engine import CorpusError
from workers.engine.corpus_reader import iter_documents
from workers.engine.finetune.records import read_examples


def upload(data: bytes, fmt: str) -> CorpusInspector:
    inspector = CorpusInspector(fmt, max_bytes=10**9, max_uncompressed=10**9,
                                max_line_bytes=10**6)
    inspector.feed(data)
    inspector.finish()
    return inspector


def jsonl(*records: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


LABELLED = {"text": "a", "label": "x"}
TAGGED = {"tokens": ["a", "b"], "tags": ["B-X", "O"]}


@pytest.mark.parametrize(("task", "data", "upload_says", "engine_says"), [
    ("text_classification", jsonl(LABELLED, {"text": "b"}),
     'line 2: every record needs a "label" (a string or a number)',
     'the train data line 2 needs a "label" (a string or a number)'),
    ("text_classification", jsonl(LABELLED, {"text": "b", "label": True}),
     "line 2: every record needs a", 'the train data line 2 needs a "label"'),
    ("text_classification", jsonl(LABELLED, {"text": "b", "label": " "}),
     "line 2: a blank label or tag", "the train data line 2: a blank label or tag"),
    ("text_classification", jsonl(LABELLED, {"text": "b", "label": "y" * 101}),
     "line 2: a label or tag longer than 100", "the train data line 2: a label or tag longer"),
    ("text_classification", jsonl(LABELLED, {"text": 3, "label": "y"}),
     'line 2 is not an object with a string "text"', 'the train data line 2 needs a string'),
    ("text_classification", jsonl(LABELLED, {**LABELLED, "split": "dev"}),
     "line 2: \"split\" must be train, valid or test, not 'dev'",
     "the train data line 2: \"split\" must be train, valid or test, not 'dev'"),
    ("text_classification", jsonl(LABELLED, {**LABELLED, "split": None}),
     '"split" must be train, valid or test, not None', "not None"),
    ("text_classification", jsonl(LABELLED) + b"[1]\n", "line 2: not a JSON object",
     "the train data line 2 is not a JSON object"),
    ("text_classification", jsonl(LABELLED) + b"{\n", "line 2 is not valid JSON",
     "the train data line 2 is not valid JSON"),
    ("token_classification", jsonl(TAGGED, {"tokens": ["a"], "tags": []}),
     'line 2: "tokens" and "tags" must be lists of strings of equal length',
     'the train data line 2: "tokens" and "tags" must be non-empty lists'),
    ("token_classification", jsonl(TAGGED, {"tokens": [], "tags": []}),
     '"tokens" and "tags" must be', '"tokens" and "tags" must be'),
    ("token_classification", jsonl(TAGGED, {"tokens": ["a"], "tags": [""]}),
     "line 2: a blank label or tag", "line 2: a blank label or tag"),
])
def test_both_sides_refuse_a_broken_record(tmp_path, task, data, upload_says, engine_says):
    with pytest.raises(CorpusRejected) as refused:
        upload(data, "jsonl")
    assert upload_says in refused.value.message and refused.value.param == "file"
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    with pytest.raises(CorpusError) as failed:
        read_examples(task, str(path), "jsonl", "the train data")
    assert engine_says in str(failed.value)


def test_error_codes_of_the_upload():
    with pytest.raises(CorpusRejected) as exc:
        upload(b"{\n", "jsonl")
    assert exc.value.code == "invalid_jsonl"
    with pytest.raises(CorpusRejected) as exc:
        upload(jsonl({"txt": "a"}), "jsonl")
    assert exc.value.code == "invalid_jsonl"
    with pytest.raises(CorpusRejected) as exc:
        upload(jsonl({"text": "a", "split": "dev"}), "jsonl")
    assert exc.value.code == "invalid_dataset"


def test_both_sides_skip_blank_texts_and_read_the_same_splits(tmp_path):
    data = jsonl({"text": "a", "label": "x", "split": "validation"}, {"text": " "},
                 {"text": "", "split": "nonsense"}, {"text": "b", "label": 2})
    found = upload(data, "jsonl")
    assert (found.kind, found.documents, found.splits) == (
        formats.LABELLED_TEXT, 2, {"validation": 1, "train": 1})
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    examples = read_examples("text_classification", str(path), "jsonl", "the train data")
    assert [(e.inputs, e.target, e.line, e.split) for e in examples] == [
        ("a", "x", 1, "valid"), ("b", "2", 4, None)]


def test_conll_lines_read_alike(tmp_path):
    data = b"# doc\n-DOCSTART- -X- O\n\nEU\tNNP\tB-ORG\n#\tSYM\tO\n\nHe PRP O\n"
    found = upload(data, "conll")
    assert (found.kind, found.documents, found.tag_column) == (formats.TAGGED_TOKENS, 2, 2)
    path = tmp_path / "train.conll"
    path.write_bytes(data)
    examples = read_examples("token_classification", str(path), "conll", "the train data", 2)
    assert [(e.inputs, e.target) for e in examples] == [(["EU", "#"], ["B-ORG", "O"]),
                                                        (["He"], ["O"])]
    lonely = data + b"lonely\n"
    with pytest.raises(CorpusRejected) as exc:
        upload(lonely, "conll")
    assert exc.value.message == "line 8: a CoNLL line needs a token and a tag column"
    path.write_bytes(lonely)
    with pytest.raises(CorpusError, match=r"^the train data line 8 needs a token and a tag "
                                          r"in column 2 \(counted from 0\)$"):
        read_examples("token_classification", str(path), "conll", "the train data", 2)


def test_pretraining_reads_what_a_text_upload_holds(tmp_path):
    data = jsonl({"text": "one", "split": "test"}, {"text": "  "}, {"text": "two"})
    assert upload(data, "jsonl").documents == 2
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(data)
    assert list(iter_documents(str(path), "jsonl")) == ["one", "two"]


def test_file_formats():
    assert formats.suffix_format("A.TXT.GZ") == formats.FORMATS["txt.gz"]
    assert formats.suffix_format("a.gz") is None and formats.suffix_format("a.csv") is None
    assert formats.FORMATS["txt.gz"].columns_as == "conll.gz"
    assert formats.formats_holding(formats.TEXT) == ("txt", "txt.gz", "jsonl", "jsonl.gz")
    assert formats.formats_holding(formats.LABELLED_TEXT) == ("jsonl", "jsonl.gz")
    assert formats.UPLOAD_SUFFIXES == ".txt, .jsonl or .conll"
    # Every kind a format holds is a kind, and every kind is held by some format.
    held = {kind for fmt in formats.FORMATS.values() for kind in fmt.holds}
    assert held == set(formats.DATASET_KINDS) == set(formats.KIND_HOLDS)
    assert set(formats.RECORD_READERS) == set(formats.DATASET_KINDS)


def test_tag_scheme():
    assert formats.is_entity_tagging({"O", "B-PER", "I-PER", "E-PER", "S-LOC", "L-X", "U-Y"})
    assert not formats.is_entity_tagging({"O"}) and not formats.is_entity_tagging(None)
    assert not formats.is_entity_tagging({"NN", "B-NP"})
    assert formats.tag_parts("U-LOC") == ("S", "LOC") and formats.tag_parts("O") == ("O", "")
