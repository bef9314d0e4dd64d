"""Dataset uploads as an attacker sends them: a gzip bomb of newlines, labels and names that
bloat every listing; and deleting a dataset takes what jobs made from it (token shards,
tokenizers) along, never while a job reads it. In-process (SQLite, local objects)."""

import gzip
import json
import time
from pathlib import Path

import pytest

from service.domain.tables import JobRow
from tests.limits_api import Api, assert_error, make_api


@pytest.fixture
def api(tmp_path: Path):
    yield from make_api(tmp_path)


def test_a_gzip_bomb_of_newlines_stops_early(api: Api):
    """The probe: a 196 KB .txt.gz of newlines cost 28 s of API CPU."""
    bomb = gzip.compress(b"\n" * (200 << 20), 9)
    assert len(bomb) < 256 * 1024
    started = time.monotonic()
    assert_error(api.upload("n.txt.gz", bomb), 413, "times its size", "file")
    # ~1 s here; 28 s before the limit existed. Generous: other tests may share the CPU.
    assert time.monotonic() - started < 15
    assert api.stored() == []
    # Ordinary compressed text is fine.
    lines = b"".join(b"document %d says something about %d\n" % (i, i * 7) for i in range(50_000))
    r = api.upload("ok.txt.gz", gzip.compress(lines))
    assert r.status_code == 201 and r.json()["documents"] == 50_000, r.text


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_labels_are_bounded_in_length_and_number(api: Api):
    """The probe: 10 labels of 10 MB made a 100 MB row returned by every GET /v1/datasets.
    README: at most 1,000 distinct labels of at most 100 characters, for every format."""
    long = [{"text": "a", "label": str(i) * 1_000_000} for i in range(10)]
    assert_error(api.upload("l.jsonl", _jsonl(long)), 422, "longer than 100 characters")
    assert_error(api.upload("l.jsonl", _jsonl([{"text": "a", "label": "x" * 101}])), 422,
                 "longer than 100")
    assert_error(api.upload("l.jsonl", _jsonl([{"text": "a", "label": int("9" * 200)}])), 422,
                 "longer than 100")
    assert_error(api.upload("l.jsonl", _jsonl([{"text": "a", "label": " "}])), 422, "blank")
    tags = [{"tokens": ["w"], "tags": ["T" * 101]}]
    assert_error(api.upload("t.jsonl", _jsonl(tags)), 422, "longer than 100")
    conll = b"".join(b"w%d " % i + b"T" * 500 + b"\n" for i in range(4))
    assert_error(api.upload("t.conll", conll), 422, "longer than 100")
    many = [{"text": "a", "label": f"l{i}"} for i in range(1001)]
    assert_error(api.upload("l.jsonl", _jsonl(many)), 422, "more than 1000")
    ok = [{"text": "a", "label": "x" * 100}, {"text": "b", "label": "y"}]
    r = api.upload("l.jsonl", _jsonl(ok))
    assert r.status_code == 201 and r.json()["labels"] == ["x" * 100, "y"], r.text
    assert api.client.get("/v1/datasets").status_code == 200


def test_dataset_names_are_checked_not_cut(api: Api):
    assert_error(api.upload("a.txt", b"doc\n", name="n" * 256), 422, "at most 255", "name")
    assert_error(api.upload("a.txt", b"doc\n", name="n" * 5000), 422, "name")
    assert_error(api.upload("a.txt", b"doc\n", name="a\x00b"), 422, "control", "name")
    r = api.client.post("/v1/datasets", files={"file": ("a.txt", b"doc\n")},
                        data={"name": "x"}, params={})
    assert r.status_code == 201
    r = api.client.post("/v1/datasets", files={"file": ("a.txt", b"doc\n"),
                                               "name": (None, b"\xff\xfe")})
    assert_error(r, 422, "UTF-8", "name")
    r = api.upload("a.txt", b"doc\n", name="é" * 255)
    assert r.status_code == 201 and r.json()["name"] == "é" * 255
    assert len(api.stored()) == 2  # only the two accepted uploads


def _job(api: Api, dataset_field: str, dataset_id: str, status: str, owner: str) -> str:
    job_id = f"job_{dataset_field}_{status}"
    spec = {"dataset_id": "ds_other", dataset_field: dataset_id}
    with api.sessions() as s:
        s.add(JobRow(id=job_id, owner=owner, type="finetune", name="j", status=status,
                     spec=spec, dataset_id=spec["dataset_id"]))
        s.commit()
    return job_id


def test_delete_takes_token_shards_and_tokenizers_along(api: Api):
    ds = api.upload("c.txt", b"one document\nanother document\n").json()["id"]
    # What a pretraining job leaves for later jobs on this dataset (workers/runner.py).
    for key in (f"tokenized/{ds}/abc123/meta.json", f"tokenized/{ds}/abc123/train-00000.npy",
                f"tokenized/{ds}/abc123/tokenizer/tokenizer.json",
                "tokenized/ds_someone_else/x/meta.json"):
        with api.store.open_write(key) as f:
            f.write(b"x")
    assert api.client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert api.stored() == ["tokenized/ds_someone_else/x/meta.json"]


@pytest.mark.parametrize("field", ["dataset_id", "validation_dataset_id", "test_dataset_id"])
def test_a_dataset_a_running_job_reads_cannot_be_deleted(api: Api, field: str):
    """A queued or running job reads it (or its shards): 409, and everything stays; once
    the job has ended the delete goes through."""
    ds = api.upload("c.txt", b"one document\n").json()["id"]
    job = _job(api, field, ds, "running", "local")
    r = api.client.delete(f"/v1/datasets/{ds}")
    assert_error(r, 409, job)
    assert any(k.startswith(f"datasets/{ds}/") for k in api.stored())
    with api.sessions() as s:
        row = s.get(JobRow, job)
        assert row is not None
        row.status = "succeeded"
        s.commit()
    assert api.client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert api.stored() == []


def test_corpus_scanning_runs_off_the_event_loop(api: Api, monkeypatch: pytest.MonkeyPatch):
    import asyncio

    from service.domain.upload_inspection import CorpusInspector

    where: list[bool] = []
    real = CorpusInspector.feed

    def spy(self: CorpusInspector, chunk: bytes) -> None:
        try:
            asyncio.get_running_loop()
            where.append(False)
        except RuntimeError:
            where.append(True)
        real(self, chunk)

    monkeypatch.setattr(CorpusInspector, "feed", spy)
    assert api.upload("c.txt.gz", gzip.compress(b"a document\n" * 1000)).status_code == 201
    assert where and all(where)


def test_multipart_bodies_are_bounded_whatever_their_parts(tmp_path: Path):
    """A chunked body (no Content-Length) of a part the route ignores used to be read to
    its end; a part header with no end grew in memory."""
    for api in make_api(tmp_path, max_upload_bytes=1 << 20):
        def body(boundary: str = "xyz"):
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"junk\"\r\n\r\n"
                   ).encode()
            for _ in range(64):
                yield b"j" * (64 * 1024)  # 4 MiB of a part nobody reads

        boundary = "xyz"
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        r = api.client.post("/v1/datasets", content=body(), headers=headers)
        assert_error(r, 413, "limit of 1048576 bytes")
        r = api.client.post("/v1/models/import", content=body(), headers=headers)
        assert_error(r, 413, "limit of 1048576 bytes")
        long_header = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                       f"filename=\"{'a' * 100_000}.txt\"\r\n\r\nx\r\n--{boundary}--\r\n")
        r = api.client.post("/v1/datasets", content=long_header.encode(), headers=headers)
        assert_error(r, 400, "malformed")  # python-multipart bounds header lines
        assert_error(api.upload("a" * 300 + ".txt", b"doc\n"), 422, "file name is longer")
        assert api.stored() == []
