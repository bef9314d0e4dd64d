"""Fine-tuning data as people have it: CoNLL column files named train.txt are found by their
content, the tag column is the NER column by default (or the one asked for), and the dataset
shows its columns so a wrong choice is seen at once. In-process: the datasets routes on SQLite
and a local object directory, no servers."""

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import http_errors
from service.api import datasets
from service.api.auth import authenticate
from service.db import get_session, make_engine
from service.domain import keys
from service.domain.tables import Base
from service.settings import Settings, get_settings
from service.storage import ObjectStore, get_store
from tests.stack import DATA, corpus_slice

# CoNLL-2003 as distributed: token POS chunk NER, space-separated, -DOCSTART- lines.
CONLL2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

European NNP B-NP B-ORG
Commission NNP I-NP I-ORG
said VBD B-VP O
. . O O
"""
NER_TAGS = ["B-MISC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"]
POS_TAGS = [".", "JJ", "NN", "NNP", "VBD", "VBZ"]


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def api(tmp_path: Path, objects: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'cloze.db'}",
                        storage_url=f"file://{objects}", rate_limit_per_minute=0)
    engine = make_engine(settings.database_url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    store = ObjectStore(settings.storage_url)

    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s
            s.commit()

    app = FastAPI()
    http_errors.install(app)
    app.include_router(datasets.router)
    app.dependency_overrides.update({
        get_session: session, get_settings: lambda: settings, get_store: lambda: store,
        authenticate: lambda: keys.ANONYMOUS})
    with TestClient(app) as client:
        yield client
    engine.dispose()


def upload(api: TestClient, filename: str, data: bytes, **params: object) -> dict:
    r = api.post("/v1/datasets", files={"file": (filename, data)}, params=params)
    assert r.status_code == 201, r.text
    return r.json()


def refused(api: TestClient, filename: str, data: bytes, param: str, says: str,
            **params: object) -> None:
    r = api.post("/v1/datasets", files={"file": (filename, data)}, params=params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def stored_files(objects: Path) -> list[Path]:
    return [p for p in objects.rglob("*") if p.is_file()]


@pytest.mark.parametrize("filename", ["train.txt", "train.conll", "train.txt.gz"])
def test_conll2003_is_tagged_tokens_with_the_ner_column(api, filename):
    data = CONLL2003.encode()
    found = upload(api, filename, gzip.compress(data) if filename.endswith(".gz") else data)
    assert found["kind"] == "tagged_tokens"
    assert found["format"] == ("conll.gz" if filename.endswith(".gz") else "conll")
    assert (found["columns"], found["tag_column"], found["labels"]) == (4, 3, NER_TAGS)
    assert found["documents"] == 3  # sentences; -DOCSTART- lines are not sentences
    assert found["column_samples"][0] == ["EU", "rejects", "German", "call", "."]
    assert found["column_samples"][1] == ["NNP", "VBZ", "JJ", "NN", "."]
    again = api.get(f"/v1/datasets/{found['id']}").json()
    assert again == found
    assert api.get("/v1/datasets").json()["data"] == [found]


def test_the_tag_column_can_be_named(api):
    pos = upload(api, "train.txt", CONLL2003.encode(), tag_column=1)
    assert (pos["tag_column"], pos["labels"]) == (1, POS_TAGS)
    last = upload(api, "train.txt", CONLL2003.encode(), tag_column=-1)
    assert (last["tag_column"], last["labels"]) == (3, NER_TAGS)
    # as a form field too
    r = api.post("/v1/datasets", files={"file": ("train.txt", CONLL2003.encode())},
                 data={"tag_column": "1"})
    assert r.status_code == 201 and r.json()["labels"] == POS_TAGS, r.text


def test_a_form_field_after_the_file_still_counts(api):
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"train.txt\"\r\n\r\n{CONLL2003}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"tag_column\"\r\n\r\n2\r\n"
            f"--{boundary}--\r\n").encode()
    r = api.post("/v1/datasets", content=body,
                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 201, r.text
    assert (r.json()["tag_column"], r.json()["labels"]) == (2, ["B-NP", "B-VP", "I-NP", "O"])


@pytest.mark.parametrize("tag_column", [4, 0, -5, 99])
def test_an_impossible_tag_column_stores_nothing(api, objects, tag_column):
    refused(api, "train.txt", CONLL2003.encode(), "tag_column", "counted from 0",
            tag_column=tag_column)
    assert api.get("/v1/datasets").json()["data"] == []
    assert stored_files(objects) == []


def test_tag_column_on_data_without_columns(api, objects):
    refused(api, "a.txt", b"Plain prose, with words.\nAnd more of it here.\n", "tag_column",
            "plain text", tag_column=1)
    refused(api, "a.jsonl", b'{"text": "a", "label": "x"}\n', "tag_column", "CoNLL",
            tag_column=1)
    r = api.post("/v1/datasets", files={"file": ("train.txt", CONLL2003.encode())},
                 data={"tag_column": "two"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "tag_column", r.text
    r = api.post("/v1/datasets", files={"file": ("train.txt", CONLL2003.encode())},
                 data={"tag_column": "1"}, params={"tag_column": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "tag_column", r.text
    assert stored_files(objects) == []


def test_prose_stays_plain_text(api):
    with gzip.open(DATA / "en-valid.txt.gz", "rb") as fh:
        lines = [fh.readline() for _ in range(3)]  # long lines: tens of KB each
    prose = upload(api, "valid.txt", b"".join(lines))
    assert (prose["kind"], prose["format"], prose["documents"]) == ("text", "txt", 3)
    assert prose["columns"] is None and prose["tag_column"] is None
    words = lines[0].decode().split()
    wrapped = "\n".join(" ".join(words[i:i + 7 + i % 5]) for i in range(0, 600, 12)).encode()
    assert upload(api, "wrapped.txt", wrapped)["kind"] == "text"
    two_words = b"hello world\ngood morning\n\nsee you\ntake care\n\nJohn Smith\nMary Jones\n"
    found = upload(api, "two.txt", two_words)
    assert (found["kind"], found["format"], found["documents"]) == ("text", "txt", 6)
    one_word = b"apple\nbanana\n\ncherry\n"
    assert upload(api, "words.txt", one_word)["kind"] == "text"


def test_brown_keeps_its_second_column(api):
    brown = corpus_slice(DATA / "brown-valid.conll.gz", 4096)
    brown = brown[:brown.rfind(b"\n\n") + 2]  # whole sentences
    for filename, data in (("brown.txt", brown), ("brown.conll.gz", gzip.compress(brown))):
        found = upload(api, filename, data)
        assert found["kind"] == "tagged_tokens" and found["format"].startswith("conll")
        assert (found["columns"], found["tag_column"]) == (3, 1)
        assert {"nn", "at", "in"} <= set(found["labels"])
        assert found["column_samples"][2][:2] == ["ap", "nns"]


def test_labels_are_bounded(api, objects):
    long = "x" * 101
    refused(api, "a.jsonl", f'{{"text": "a", "label": "{long}"}}\n'.encode(), "file",
            "longer than 100")
    refused(api, "a.jsonl", f'{{"tokens": ["a"], "tags": ["{long}"]}}\n'.encode(), "file",
            "longer than 100")
    refused(api, "a.conll", f"a\t{long}\nb\tO\n".encode(), "file", "longer than 100")
    assert stored_files(objects) == []
    # the long values sit in a column that is not the tag column: fine, and shown cut short
    found = upload(api, "a.conll", f"a\tB-X\t{long}\nb\tO\tc\n".encode())
    assert found["labels"] == ["B-X", "O"] and len(found["column_samples"][2][0]) == 40
