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
    for start in range(0, len(data), 5):  # in small chunks: records span them
        inspector.feed(data[start:start + 5])
    inspector.finish()
    inspector.close()
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
    assert formats.suffix_format("a.gz") is None and formats.suffix_format("a.xlsx") is None
    assert formats.FORMATS["txt.gz"].columns_as == "conll.gz"
    tables = ("csv", "csv.gz", "tsv", "tsv.gz", "tsv-quoted", "tsv-quoted.gz", "parquet")
    assert formats.formats_holding(formats.TEXT) == ("txt", "txt.gz", "jsonl", "jsonl.gz",
                                                     *tables)
    assert formats.formats_holding(formats.LABELLED_TEXT) == ("jsonl", "jsonl.gz", *tables)
    assert formats.UPLOAD_SUFFIXES == ".txt, .jsonl, .json, .conll, .csv, .tsv or .parquet"
    # What a .tsv turns out to be (TSV_QUOTING): no upload is named so.
    assert formats.FORMATS["tsv.gz"].quotes_as == "tsv-quoted.gz"
    assert not formats.FORMATS["tsv"].quoted and formats.FORMATS["tsv-quoted"].quoted
    assert formats.suffix_format("a.tsv-quoted") is None
    assert "quoted" not in formats.GZIP_SUFFIXES
    assert formats.formats_holding(formats.EXTRACTIVE_QA) == ("jsonl", "jsonl.gz", "json",
                                                              "json.gz")
    assert formats.FORMATS["json.gz"].lines_as == "jsonl.gz"
    assert formats.suffix_format("a.TSV.gz") == formats.FORMATS["tsv.gz"]
    assert formats.suffix_format("a.parquet.gz") is None  # Parquet compresses inside
    assert {f.name for f in formats.FORMATS.values() if f.table} == set(tables)
    # Every role a kind reads is a role, with a name it is found by.
    for roles in (*formats.KIND_ROLES.values(), *formats.OPTIONAL_ROLES.values()):
        assert set(roles) <= set(formats.ROLES) and all(formats.ROLE_NAMES[r] for r in roles)
    # Every kind a format holds is a kind, and every kind is held by some format.
    held = {kind for fmt in formats.FORMATS.values() for kind in fmt.holds}
    assert held == set(formats.DATASET_KINDS) == set(formats.KIND_HOLDS)
    assert set(formats.RECORD_READERS) == set(formats.DATASET_KINDS)


def test_tag_scheme():
    assert formats.is_entity_tagging({"O", "B-PER", "I-PER", "E-PER", "S-LOC", "L-X", "U-Y"})
    assert not formats.is_entity_tagging({"O"}) and not formats.is_entity_tagging(None)
    assert not formats.is_entity_tagging({"NN", "B-NP"})
    assert formats.tag_parts("U-LOC") == ("S", "LOC") and formats.tag_parts("O") == ("O", "")


# A CSV the csv module reads in one way, and the upload's record-at-a-time reader
# (formats.ends_in_quotes) must read in the same: quotes, doubled quotes, newlines and
# delimiters inside quotes, a stray quote inside an unquoted field, CRLF, a BOM, blank lines.
# (A TSV is read a line a record: the tests below.)
TRICKY_CSV = ('\ufefftext,label\r\n'
              '"a, ""quoted"" text",x\r\n'
              '5" tall and ""odd,y\n'
              '\n'
              '"two\nlines\n\nand a blank one",x\n'
              '"ends with a quote""",y\n'
              'plain,"x"\n')


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_both_sides_read_a_table_alike(tmp_path, fmt):
    import csv
    import gzip as gz
    import io

    text = TRICKY_CSV
    data = text.encode()
    stored = gz.compress(data) if fmt.endswith(".gz") else data
    found = upload(stored, fmt)
    rows = [r for r in csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
            if r][1:]
    assert found.documents == len(rows) == 5
    assert found.labels == {r[1] for r in rows} == {"x", "y"}
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(stored)
    examples = read_examples("text_classification", str(path), fmt, "the train data")
    assert [(e.inputs, e.target) for e in examples] == [tuple(r) for r in rows]
    profile = found.profile["columns"]
    assert profile["text"]["lengths"]["count"] == 5
    assert profile["label"]["values"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_both_sides_refuse_a_ragged_row(tmp_path, fmt):
    data = b"text,label\na,x\nb,y,z\n".replace(b",", b"," if fmt == "csv" else b"\t")
    with pytest.raises(CorpusRejected) as refused:
        upload(data, fmt)
    assert refused.value.message == "row 2 has 3 values where the header has 2 columns (line 3)"
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=r"^the train data row 2 has 3 values where the header "
                                          r"has 2 columns \(line 3\)$"):
        read_examples("text_classification", str(path), fmt, "the train data")


# -- TSV (formats.py's TSV_QUOTING): linear, as GLUE writes it, unless its quotes are quoted
# fields, as pandas writes them.

# MNLI as GLUE ships it (dev_matched.tsv's columns, shortened): a line a record, a quote a
# character. A sentence opens a quote it never closes (read with quoting, it would swallow
# the lines after it into one field), another has quotes inside, another is all a quotation
# (its quotes are text too: the file is linear); CRLF, a BOM, a lone CR inside a sentence.
MNLI_TSV = ('\ufeffindex\tsentence1\tsentence2\tgold_label\r\n'
            '0\t"The new rights are nice enough\tEveryone likes the benefits\tneutral\r\n'
            '1\tIt lists "all" of the award winners.\tThe list is short.\tcontradiction\n'
            '\n'
            '2\t"Yes."\tHe said no.\tcontradiction\n'
            '3\tuh i don\'t know "\ti\'m not sure\rat all\tentailment\n')
MNLI_ROWS = [line.split("\t") for line in MNLI_TSV.removeprefix("\ufeff").replace(
    "\r\n", "\n").split("\n") if line][1:]


def tsv_as_pandas_writes(rows: list[list[str]]) -> str:
    """Rows as pandas' to_csv(sep="\\t") writes them: the csv module, quoting the fields that
    hold a quote, a tab or a newline."""
    import csv
    import io

    out = io.StringIO()
    csv.writer(out, delimiter="\t", lineterminator="\n").writerows(rows)
    return out.getvalue()


PANDAS_ROWS = [["sentence1", "sentence2", "label"],
               ['He said "hi"', "A greeting.", "entailment"],
               ['"Yes."', "tab\tinside", "neutral"],
               ['"', "", "contradiction"],
               ["No quotes here", "None", "neutral"]]


def test_the_tsv_quoting_rule():
    values = formats.quoted_tsv_values
    assert values('"He said ""hi"""\t"a\tb"\t""\tplain') == ['He said "hi"', "a\tb", "",
                                                            "plain"]
    assert values("a\t\tb\t") == ["a", "", "b", ""]
    for line in ('"Yes, he said\tx', 'a "b"\tc', '"a"b\tc', '"a""\tc', 'x\t "b"'):
        assert values(line) is None, line  # a quote that does not quote a whole field


@pytest.mark.parametrize("fmt", ["tsv", "tsv.gz"])
def test_both_sides_read_glue_tsv_a_line_a_record(tmp_path, fmt):
    import gzip as gz

    data = MNLI_TSV.encode()
    stored = gz.compress(data) if fmt.endswith(".gz") else data
    found = upload(stored, fmt)
    assert (found.fmt, found.kind, found.documents) == (fmt, formats.LABELLED_TEXT, 4)
    assert found.labels == {"neutral", "contradiction", "entailment"}
    assert found.profile["columns"]["sentence1"]["values"] == {r[1]: 1 for r in MNLI_ROWS}
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(stored)
    examples = read_examples("text_classification", str(path), found.fmt, "the train data")
    assert [[e.inputs, e.pair, e.target] for e in examples] == [r[1:] for r in MNLI_ROWS]
    assert examples[0].inputs == '"The new rights are nice enough'
    assert list(iter_documents(str(path), found.fmt)) == [r[1] for r in MNLI_ROWS]


@pytest.mark.parametrize("fmt", ["tsv", "tsv.gz"])
def test_both_sides_read_a_pandas_tsv_with_its_quotes(tmp_path, fmt):
    import gzip as gz

    data = tsv_as_pandas_writes(PANDAS_ROWS).encode()
    assert b'"He said ""hi"""\t' in data and b'"""Yes."""' in data and b'""""' in data
    stored = gz.compress(data) if fmt.endswith(".gz") else data
    found = upload(stored, fmt)
    assert (found.fmt, found.documents) == (fmt.replace("tsv", "tsv-quoted"), 4)
    assert found.profile["columns"]["sentence1"]["values"] == {r[0]: 1 for r in PANDAS_ROWS[1:]}
    assert found.profile["columns"]["sentence2"]["empty"] == 1
    path = tmp_path / f"train.{found.fmt}"
    path.write_bytes(stored)
    examples = read_examples("text_classification", str(path), found.fmt, "the train data")
    assert [[e.inputs, e.pair or "", e.target] for e in examples] == PANDAS_ROWS[1:]


def test_a_tsv_neither_reading_can_read_is_refused_saying_both():
    # pandas quotes a cell holding a newline: a line a record, that cell is two lines.
    data = tsv_as_pandas_writes([["text", "label"], ["a", "x"], ["two\nlines", "y"]]).encode()
    with pytest.raises(CorpusRejected) as refused:
        upload(data, "tsv")
    assert refused.value.message == (
        "row 2 has 1 values where the header has 2 columns (line 3) (the TSV read a line a "
        "record, quotes as text; read with RFC 4180 quoted fields: line 3 has a quote that "
        "does not quote a whole field on its line)")
    # A tab inside quotes rules out the linear reading; a stray quote then the quoted one.
    data = b'text\tlabel\n"a\tb"\tx\nsaid "no"\ty\n'
    with pytest.raises(CorpusRejected) as refused:
        upload(data, "tsv")
    assert refused.value.message == (
        "line 3 has a quote that does not quote a whole field on its line (the TSV read with "
        "RFC 4180 quoted fields; read a line a record, quotes as text: row 1 has 3 values "
        "where the header has 2 columns (line 2))")


def test_both_sides_read_parquet_through_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"s1": ["a", "b", ""], "s2": ["c", "d", "e"], "y": [0, 1, 1]}),
                   path, row_group_size=2)
    found = upload(path.read_bytes(), "parquet")
    assert found.kind == formats.TEXT and found.documents == 3  # no column named for a role
    examples = read_examples("text_classification", str(path), "parquet", "the train data",
                             columns={"text": "s1", "text_pair": "s2", "label": "y"})
    assert [(e.inputs, e.pair, e.target) for e in examples] == [("a", "c", "0"),
                                                               ("b", "d", "1")]
    with pytest.raises(CorpusError, match=r"row 1 needs a string \"text\".*text='y'"):
        read_examples("text_classification", str(path), "parquet", "the train data",
                      columns={"text": "y", "label": "s1"})
    assert list(iter_documents(str(path), "parquet", {"text": "s2"})) == ["c", "d", "e"]


# -- SQuAD's and CMRC 2018's files: one JSON document, or JSON lines named .json


@pytest.mark.parametrize(("fmt", "indent"), [("json", None), ("json.gz", 2)])
def test_both_sides_read_a_squad_document_as_its_json_lines(tmp_path, data_dir, fmt, indent):
    import gzip as gz

    from tests.test_question_answering import brown_qa, squad_document

    records = [{k: v for k, v in r.items() if k != "split"}
               for r in brown_qa(data_dir, "train", 40)]
    text = json.dumps(squad_document(records), indent=indent)
    assert (indent is None) == ("\n" not in text)  # one line, as SQuAD ships it, or many
    data = ("\ufeff" + text).encode()
    stored = gz.compress(data) if fmt.endswith(".gz") else data
    found = upload(stored, fmt)
    assert (found.fmt, found.kind, found.documents, found.splits) == (
        fmt, formats.EXTRACTIVE_QA, 40, {"train": 40})
    (tmp_path / "train.json").write_bytes(stored)
    (tmp_path / "train.jsonl").write_bytes(jsonl(*records))
    read = read_examples("question_answering", str(tmp_path / "train.json"), fmt,
                         "the train data")
    flat = read_examples("question_answering", str(tmp_path / "train.jsonl"), "jsonl",
                         "the train data")
    assert read == flat and sum(not e.target for e in read) > 0  # unanswerable ones too


def test_both_sides_read_a_cmrc_document(tmp_path):
    from tests.test_question_answering import CMRC

    data = json.dumps(CMRC, ensure_ascii=False, indent=1).encode()
    found = upload(data, "json")  # 5-byte chunks: characters are cut across them
    assert (found.fmt, found.kind, found.documents) == ("json", formats.EXTRACTIVE_QA, 5)
    path = tmp_path / "cmrc2018_train.json"
    path.write_bytes(data)
    examples = read_examples("question_answering", str(path), "json", "the train data")
    assert [(e.inputs, e.target, e.qa and e.qa.id) for e in examples][2:4] == [
        ("中国最长的河流是什么？", ["长江"], "TRAIN_1_QUERY_0"),
        ("长江全长约多少公里？", ["6300公里"], "TRAIN_1_QUERY_1")]


def _cmrc(change) -> bytes:
    from tests.test_question_answering import CMRC

    document = json.loads(json.dumps(CMRC))
    change(document)
    # On several lines: a .json whose first line is a whole object holds JSON lines.
    return json.dumps(document, ensure_ascii=False, indent=1).encode()


@pytest.mark.parametrize(("data", "says"), [
    (_cmrc(lambda d: d["data"][1]["paragraphs"][1]["qas"][0]["answers"][0].update(
        answer_start=9)),
     "data[1].paragraphs[1].qas[0]: answers[0].answer_start (9) does not point at "
     "answers[0].text ('曹雪芹') in \"context\", which reads '家曹雪' there"),
    (_cmrc(lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question")),
     'data[0].paragraphs[0].qas[1] needs a non-blank string "question"'),
    (_cmrc(lambda d: d["data"][1]["paragraphs"][0].update(context=" ")),
     'data[1].paragraphs[0] needs a non-blank string "context"'),
    (_cmrc(lambda d: d["data"][1]["paragraphs"][0].update(qas={})),
     'data[1].paragraphs[0]: "qas" must be a list of questions'),
    (_cmrc(lambda d: d["data"][1].pop("paragraphs")), 'data[1] has no "paragraphs"'),
    (_cmrc(lambda d: d.pop("data")), 'the document has no "data"'),
    (b'{"version": "v1.1",\n "data": [{"title": "x", "paragraphs": [}',
     "the document is not valid JSON: Expecting value at line 2, column 41"),
    (b'[{"context": "a", "question": "b", "answers": []}]',
     'the document must be a JSON object holding "data"'),
])
def test_both_sides_refuse_a_broken_document_naming_where(tmp_path, data, says):
    with pytest.raises(CorpusRejected) as refused:
        upload(data, "json")
    assert refused.value.message.startswith(says) and refused.value.param == "file"
    path = tmp_path / "train.json"
    path.write_bytes(data)
    with pytest.raises(CorpusError) as failed:
        read_examples("question_answering", str(path), "json", "the train data")
    assert str(failed.value).startswith(f"the train data: {says}")


def test_a_json_file_is_json_lines_if_its_first_line_is_a_record(tmp_path, monkeypatch):
    """JSON lines named .json (Hugging Face datasets' to_json writes them) are JSON lines,
    whatever they hold and however long; a .json document has a bound."""
    qa = {"context": "The cat sat.", "question": "Who?",
          "answers": [{"text": "cat", "answer_start": 4}]}
    monkeypatch.setattr(formats, "MAX_DOCUMENT_BYTES", 1000)
    lines = b"\n\n" + jsonl(*[qa] * 30)
    assert len(lines) > 1000
    found = upload(lines, "json")
    assert (found.fmt, found.kind, found.documents) == ("jsonl", formats.EXTRACTIVE_QA, 30)
    found = upload(__import__("gzip").compress(jsonl(LABELLED, LABELLED)), "json.gz")
    assert (found.fmt, found.kind, found.documents) == ("jsonl.gz", formats.LABELLED_TEXT, 2)
    with pytest.raises(CorpusRejected) as refused:  # its lines' rules, by line
        upload(jsonl(qa, {**qa, "question": ""}), "json")
    assert refused.value.message == 'line 2 needs a non-blank string "question"'
    document = {"data": [{"paragraphs": [{"context": "The cat sat.", "qas": [qa] * 30}]}]}
    with pytest.raises(CorpusRejected) as refused:
        upload(json.dumps(document).encode(), "json")
    assert refused.value.code == "document_too_large"
    assert "larger than 0 MB: split it" in refused.value.message
    with pytest.raises(CorpusRejected) as refused:
        upload(b"", "json")
    assert refused.value.code == "empty_file"
    with pytest.raises(CorpusRejected) as refused:
        CorpusInspector("json", max_bytes=10**9, max_uncompressed=10**9,
                        max_line_bytes=10**6, tag_column=2)
    assert refused.value.param == "tag_column"
