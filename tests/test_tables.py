"""Data as people keep it (issue 24, item 2): CSV, TSV and Parquet uploads, their detected
columns, a job's "columns" map checked against them, and GET /v1/datasets/{id}/preview.
In-process: the whole app on SQLite and a local object directory, no servers."""

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.inprocess import client as client_of
from tests.inprocess import make_app

NLI_CSV = ('\ufeffsentence1,sentence2,gold_label,split\n'
           '"A man, smiling","Someone is ""happy""",entailment,train\n'
           '"Two lines\nin one cell",Nothing here,neutral,train\r\n'
           'A dog runs,A cat sleeps,contradiction,valid\n'
           'Kids play,Children play,entailment,test\n')


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        yield client_of(app)


def upload(api: TestClient, filename: str, data: bytes) -> dict:
    r = api.post("/v1/datasets", files={"file": (filename, data)})
    assert r.status_code == 201, r.text
    return r.json()


def refused(api: TestClient, filename: str, data: bytes, code: str, says: str,
            status: int = 422) -> None:
    r = api.post("/v1/datasets", files={"file": (filename, data)})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == "file" and says in error["message"], \
        error
    assert api.get("/v1/datasets").json()["data"] == []  # nothing half-stored


def parquet(table: dict, **options) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(table), out, **options)
    return out.getvalue()


@pytest.mark.parametrize("filename", ["nli.csv", "nli.csv.gz"])
def test_csv_with_quotes_newlines_and_a_bom(api, filename):
    data = NLI_CSV.encode()
    found = upload(api, filename, gzip.compress(data) if filename.endswith(".gz") else data)
    assert found["format"] == filename.removeprefix("nli.")
    assert found["fields"] == [{"name": "sentence1", "type": "string"},
                               {"name": "sentence2", "type": "string"},
                               {"name": "gold_label", "type": "string"},
                               {"name": "split", "type": "string"}]
    assert found["kind"] == "labelled_text"
    assert found["labels"] == ["contradiction", "entailment", "neutral"]
    assert found["documents"] == 4
    assert found["splits"] == {"train": 2, "valid": 1, "test": 1}
    preview = api.get(f"/v1/datasets/{found['id']}/preview", params={"limit": 2}).json()
    assert preview["records"] == [
        {"sentence1": "A man, smiling", "sentence2": 'Someone is "happy"',
         "gold_label": "entailment", "split": "train"},
        {"sentence1": "Two lines\nin one cell", "sentence2": "Nothing here",
         "gold_label": "neutral", "split": "train"}]
    columns = {c["name"]: c for c in preview["columns"]}
    assert columns["sentence1"]["role"] == "text"
    assert columns["sentence2"]["role"] == "text_pair"
    assert columns["gold_label"]["role"] == "label"
    assert columns["gold_label"]["labels"]["counts"] == [
        {"value": "entailment", "count": 2}, {"value": "contradiction", "count": 1},
        {"value": "neutral", "count": 1}]
    lengths = columns["sentence1"]["lengths"]
    assert (lengths["count"], lengths["min"], lengths["max"]) == (4, 9, 21)
    assert sum(lengths["counts"]) == 4 and columns["sentence1"]["labels"] is None


def test_tsv_typed_columns_and_no_known_names(api):
    found = upload(api, "scores.tsv", b"premise_text\tscore\tid\nA b\t0.5\t1\nC d\t4\t2\n")
    assert found["format"] == "tsv"  # no quote: read alike either way
    assert found["fields"] == [{"name": "premise_text", "type": "string"},
                               {"name": "score", "type": "number"},
                               {"name": "id", "type": "integer"}]
    assert found["kind"] == "text"  # no column is named for the text: the job says which


@pytest.mark.parametrize("filename", ["mnli.tsv", "mnli.tsv.gz"])
def test_glue_tsv_is_read_a_line_a_record(api, filename):
    """MNLI as GLUE ships it: a sentence opening a quote it never closes is one line's text,
    not the start of a field running on to the next quote (formats.py's TSV_QUOTING)."""
    from tests.test_formats import MNLI_ROWS, MNLI_TSV

    data = MNLI_TSV.encode()
    found = upload(api, filename, gzip.compress(data) if filename.endswith(".gz") else data)
    assert found["format"] == filename.removeprefix("mnli.")
    assert (found["kind"], found["documents"]) == ("labelled_text", 4)
    assert found["labels"] == ["contradiction", "entailment", "neutral"]
    preview = api.get(f"/v1/datasets/{found['id']}/preview").json()
    assert preview["records"] == [dict(zip(["index", "sentence1", "sentence2", "gold_label"],
                                           row, strict=True)) for row in MNLI_ROWS]
    assert preview["records"][0]["sentence1"] == '"The new rights are nice enough'
    assert preview["rows"] == 4


def test_pandas_tsv_is_read_with_its_quotes(api):
    from tests.test_formats import PANDAS_ROWS, tsv_as_pandas_writes

    found = upload(api, "pairs.tsv", tsv_as_pandas_writes(PANDAS_ROWS).encode())
    assert (found["format"], found["documents"]) == ("tsv-quoted", 4)
    preview = api.get(f"/v1/datasets/{found['id']}/preview").json()
    assert preview["records"] == [dict(zip(PANDAS_ROWS[0], row, strict=True))
                                  for row in PANDAS_ROWS[1:]]


@pytest.mark.parametrize("data, says", [
    (b"text,label\na,b,c\n", "row 1 has 3 values where the header has 2 columns (line 2)"),
    (b"text,label\nok,x\n\"never closed,y\n", "ends inside a quoted field"),
    (b"text,,label\n", "column 2 has no name"),
    (b"text,text\na,b\n", "two columns are named 'text'"),
    (b"text,label\n", "a header but no rows"),
    (b"text,split\na,dev\n", '"split" must be train, valid or test'),
])
def test_bad_tables_are_refused(api, data, says):
    refused(api, "bad.csv", data, "no_documents" if says.endswith("no rows") else
            "invalid_dataset", says)


def test_a_ragged_tsv_line_is_refused_naming_it(api):
    refused(api, "bad.tsv", b'text\tlabel\nShe said "hi\tx\na\tb\tc\n', "invalid_dataset",
            "row 2 has 3 values where the header has 2 columns (line 3) (the TSV read a line "
            "a record, quotes as text; read with RFC 4180 quoted fields: line 2 has a quote")


def test_a_huge_cell_is_refused(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0",
                  CLOZE_MAX_JSONL_LINE_BYTES="2048") as app:
        api = client_of(app)
        refused(api, "big.csv", b"text,label\n" + b"x" * 5000 + b",y\n", "line_too_long",
                "longer than 2048", 413)
        # A quoted cell whose newlines hide its size is bounded all the same.
        refused(api, "big.csv", b'text,label\n"' + b"x\n" * 3000 + b'",y\n', "line_too_long",
                "longer than 2048", 413)
        refused(api, "big.parquet", parquet({"text": ["y" * 5000], "label": ["a"]}),
                "line_too_long", "longer than 2048", 413)


def test_parquet_with_lists_and_types(api):
    data = parquet({"tokens": [["EU", "rejects"], ["Peter"]], "tags": [["B-ORG", "O"],
                                                                       ["B-PER"]],
                    "n": [1, 2], "text": ["EU rejects", None]}, row_group_size=1)
    found = upload(api, "ner.parquet", data)
    assert found["format"] == "parquet" and found["kind"] == "tagged_tokens"
    assert found["labels"] == ["B-ORG", "B-PER", "O"]
    assert found["fields"] == [{"name": "tokens", "type": "list"},
                               {"name": "tags", "type": "list"},
                               {"name": "n", "type": "integer"},
                               {"name": "text", "type": "string"}]
    preview = api.get(f"/v1/datasets/{found['id']}/preview").json()
    assert preview["records"][1] == {"tokens": ["Peter"], "tags": ["B-PER"], "n": 2,
                                     "text": None}
    columns = {c["name"]: c for c in preview["columns"]}
    assert columns["tags"]["labels"]["counts"][0] == {"value": "B-ORG", "count": 1}
    assert columns["text"]["empty"] == 1


@pytest.mark.parametrize("data", [b"PAR1 not a parquet file at all",
                                  parquet({"text": ["a", "b"]})[:-12],  # a damaged footer
                                  b"text,label\na,b\n"])
def test_a_parquet_that_is_not_one(api, data):
    refused(api, "data.parquet", data, "invalid_parquet", "not a Parquet file")


def test_preview_of_jsonl_and_its_bounds(api):
    lines = "".join(f'{{"text": "{"word " * i}", "label": "{"ab"[i % 2]}"}}\n'
                    for i in range(1, 31))
    found = upload(api, "l.jsonl", lines.encode())
    preview = api.get(f"/v1/datasets/{found['id']}/preview", params={"limit": 3}).json()
    assert [r["label"] for r in preview["records"]] == ["b", "a", "b"]
    columns = {c["name"]: c for c in preview["columns"]}
    assert columns["label"]["labels"]["counts"] == [{"value": "a", "count": 15},
                                                    {"value": "b", "count": 15}]
    assert columns["text"]["lengths"]["count"] == 30
    for params in ({"limit": 0}, {"limit": 101}, {"top": 0}):
        r = api.get(f"/v1/datasets/{found['id']}/preview", params=params)
        assert r.status_code == 422 and r.json()["error"]["param"] == next(iter(params))
    assert api.get("/v1/datasets/ds_missing/preview").status_code == 404


def _base_model(owner: str = "local") -> str:
    from sqlalchemy.orm import Session

    from service.db import get_engine
    from service.domain.tables import ModelRow

    with Session(get_engine()) as s:
        s.add(ModelRow(id="m_base", owner=owner, name="base", task="fill-mask",
                       architecture="bert", storage_prefix="models/m_base",
                       archive_key="models/m_base.tar.gz", bytes=1, details={}))
        s.commit()
    return "m_base"


def test_columns_are_checked_against_the_dataset(api):
    base = _base_model()
    csv_id = upload(api, "nli.csv", NLI_CSV.encode())["id"]
    scores = upload(api, "scores.tsv", b"a\tb\tscore\nx\ty\t0.5\nz\tw\t3\n")["id"]
    jsonl = upload(api, "l.jsonl", b'{"text": "a", "label": "x"}\n')["id"]

    def submit(dataset_id: str, **spec) -> dict:
        r = api.post("/v1/jobs", params={"dry_run": "true"}, json={
            "type": "finetune", "task": "text_classification", "base_model_id": base,
            "dataset_id": dataset_id, **spec})
        return r.json() | {"status": r.status_code}

    for columns, param, says in [
        ({"text": "sentence1", "label": "gold"}, "columns.label",
         "has no column 'gold'; its columns are 'sentence1', 'sentence2', 'gold_label'"),
        ({"txt": "sentence1"}, "columns.txt", "'txt' is not a role"),
        ({"text": "sentence1", "text_pair": "sentence1"}, "columns.text_pair",
         "already read as 'text'"),
        ({"text": "sentence1", "label": "sentence2"}, None, None),
    ]:
        got = submit(csv_id, columns=columns)
        if param is None:  # a text column as the label: 4 distinct values of 4 rows fit
            assert got["status"] == 200, got
            continue
        assert got["status"] == 422 and got["error"]["param"] == param, got
        assert says in got["error"]["message"], got
    # A table with no column named for the text: the job must say which.
    got = submit(scores, task="regression")
    assert got["status"] == 422 and got["error"]["param"] == "columns.text", got
    assert submit(scores, task="regression", columns={"text": "a", "text_pair": "b"}
                  )["status"] == 200
    got = submit(scores, task="regression", columns={"text": "a", "label": "b"})
    assert got["error"]["param"] == "columns.label" and "needs a number in column 'b'" in \
        got["error"]["message"], got
    got = submit(scores, columns={"text": "score", "label": "a"})
    assert got["error"]["param"] == "columns.text" and "holds number values" in \
        got["error"]["message"], got
    got = submit(jsonl, columns={"text": "text"})
    assert got["error"]["param"] == "columns", got
    # Pretraining from a table reads its text column.
    r = api.post("/v1/jobs", params={"dry_run": "true"}, json={
        "dataset_id": scores, "columns": {"label": "score"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "columns.label", r.text
    r = api.post("/v1/jobs", params={"dry_run": "true"}, json={"dataset_id": scores})
    assert r.status_code == 422 and r.json()["error"]["param"] == "columns.text", r.text
