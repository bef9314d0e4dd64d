"""Every error a user can cause gets a clear 4xx in the one error shape, and no 500."""

import gzip
import threading
import time

import httpx
import psutil
import pytest

from tests.stack import Stack


def assert_error(r: httpx.Response, status: int, param: str | None = None,
                 says: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if says is not None:
        assert says in error["message"], error
    assert "Traceback" not in r.text and "/work/" not in r.text


@pytest.fixture(scope="module")
def stack(embedded_stack: Stack) -> Stack:
    return embedded_stack


@pytest.fixture(scope="module")
def dataset_id(stack: Stack) -> str:
    r = stack.upload("ok.txt", b"one document\nanother document\n")
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_empty_upload(stack):
    assert_error(stack.upload("empty.txt", b""), 422, "file", "empty")
    assert_error(stack.upload("blank.txt", b"\n  \n\t\n"), 422, "file", "no documents")


def test_not_utf8(stack):
    assert_error(stack.upload("latin1.txt", "café\nna\xefve\n".encode("latin-1")), 422, "file",
                 "UTF-8")
    # a character split across network chunks is fine; a truly bad byte is not
    assert stack.upload("ok.txt", ("é" * 100_000 + "\n").encode()).status_code == 201
    assert_error(stack.upload("bad.txt.gz", gzip.compress(b"ok\n\xff\xfe\n")), 422, "file",
                 "line 2")


def test_bad_gzip_and_jsonl_and_type(stack):
    assert_error(stack.upload("x.txt.gz", b"not gzip at all"), 422, "file", "gzip")
    assert_error(stack.upload("x.jsonl", b'{"text": "fine"}\n{"txt": "no"}\n'), 422, "file",
                 "line 2")
    assert_error(stack.upload("x.jsonl", b'{"text": "fine"}\nnot json\n'), 422, "file")
    assert_error(stack.upload("x.pdf", b"%PDF-1.4"), 415, "file", ".jsonl")
    r = stack.client.post("/v1/datasets", content=b"text", headers={"content-type": "text/plain"})
    assert_error(r, 415)
    r = stack.client.post("/v1/datasets", files={"other": ("a.txt", b"x\n")})
    assert_error(r, 422, "file")


def test_jsonl_and_gzip_accepted(stack):
    r = stack.upload("x.jsonl.gz", gzip.compress(b'{"text": "a b"}\n\n{"text": "c"}\n'))
    assert r.status_code == 201 and r.json()["documents"] == 2 and r.json()["format"] == "jsonl.gz"


def test_oversized_upload_is_refused_and_memory_stays_flat(stack):
    """The embedded stack's limit is 8 MiB; send 64 MiB, streamed with no Content-Length."""
    server = psutil.Process(stack.pid("up"))
    before = server.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)

    def body():
        yield (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
               b"Content-Type: text/plain\r\n\r\n")
        line = b"all work and no play makes jack a dull boy\n" * 1500
        for _ in range(64 * 1024 * 1024 // len(line)):
            yield line
        yield b"\r\n--B--\r\n"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = httpx.post(f"{stack.url}/v1/datasets", content=body(), timeout=60,
                       headers={"content-type": "multipart/form-data; boundary=B"})
        assert_error(r, 413, "file", "limit")
    except httpx.TransportError:
        pass  # the server may close the connection as soon as it has answered 413
    finally:
        done.set()
        watcher.join()
    assert peak[0] - before < 40 * 1024 * 1024, (before, peak[0])
    # a declared Content-Length over the limit is refused before any byte is read
    r = stack.client.post("/v1/datasets", content=b"x" * (9 * 1024 * 1024),
                          headers={"content-type": "multipart/form-data; boundary=B"})
    assert_error(r, 413)
    # nothing half-written was kept
    names = [d["name"] for d in stack.client.get("/v1/datasets?limit=100").json()["data"]]
    assert "big.txt" not in names


JOB_422 = [
    ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"sequence_length": 1024}}, "hyperparameters.sequence_length"),
    ({"model": {"max_position_embeddings": 64}, "hyperparameters": {"sequence_length": 128}},
     "hyperparameters.sequence_length"),
    ({"tokenizer": {"vocab_size": 10}}, "tokenizer.vocab_size"),
    ({"model": {"size": "huge"}}, "model.size"),
    ({"model": {"hidden_size": 100, "num_heads": 3}}, "model.num_heads"),
    ({"hyperparameters": {"max_steps": 0}}, "hyperparameters.max_steps"),
    ({"hyperparameters": {"warmup_steps": 5000}}, "hyperparameters.warmup_steps"),
    ({"hyperparameters": {"mask_probability": 1.5}}, "hyperparameters.mask_probability"),
    ({"hyperparameters": {"lerning_rate": 1e-3}}, "hyperparameters.lerning_rate"),
    ({"objective": "telepathy"}, "objective"),
    ({"validation_fraction": 0}, "validation_fraction"),
]


@pytest.mark.parametrize(("patch", "param"), JOB_422)
def test_job_spec_out_of_range(stack, dataset_id, patch, param):
    r = stack.client.post("/v1/jobs", json={"dataset_id": dataset_id, **patch})
    assert_error(r, 422, param)


def test_nan_learning_rate_and_unknown_dataset(stack, dataset_id):
    r = stack.client.post("/v1/jobs", content=b'{"dataset_id": "%s", "hyperparameters": '
                          b'{"learning_rate": NaN}}' % dataset_id.encode(),
                          headers={"content-type": "application/json"})
    assert_error(r, 422, "hyperparameters.learning_rate")
    assert_error(stack.client.post("/v1/jobs", json={"dataset_id": "ds_nope"}), 422,
                 "dataset_id", "ds_nope")
    assert_error(stack.client.post("/v1/jobs", json={}), 422, "dataset_id")
    assert_error(stack.client.post("/v1/jobs", content=b"{not json",
                                   headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("path", [
    "/v1/datasets/ds_nope", "/v1/jobs/job_nope", "/v1/jobs/job_nope/metrics",
    "/v1/jobs/job_nope/events", "/v1/jobs/job_nope/checkpoints", "/v1/models/m_nope",
    "/v1/models/m_nope/download", "/v1/nothing-here",
])
def test_unknown_ids_are_404(stack, path):
    assert_error(stack.client.get(path), 404)


def test_unknown_ids_on_writes_are_404(stack):
    assert_error(stack.client.delete("/v1/datasets/ds_nope"), 404)
    assert_error(stack.client.post("/v1/jobs/job_nope/cancel"), 404)
    assert_error(stack.client.post("/v1/models/m_nope/fill-mask", json={"inputs": "[MASK]"}), 404)


def test_bad_query_parameters(stack):
    assert_error(stack.client.get("/v1/jobs", params={"limit": 0}), 422, "limit")
    assert_error(stack.client.get("/v1/jobs", params={"status": "sleeping"}), 422, "status")


def test_cancel_queued_job_and_delete_dataset(stack):
    """A job cancelled before a worker takes it never runs; its dataset can then go."""
    r = stack.upload("c.txt", b"word " * 2000 + b"\n")
    ds = r.json()["id"]
    r = stack.client.post("/v1/jobs", json={"dataset_id": ds, "model": {"size": "tiny"},
                                            "tokenizer": {"vocab_size": 300},
                                            "hyperparameters": {"max_steps": 100000,
                                                                "sequence_length": 16}})
    job = r.json()["id"]
    r = stack.client.post(f"/v1/jobs/{job}/cancel")
    assert r.status_code == 200
    status = r.json()["status"]
    if status == "running":  # the worker was faster than us: it must stop within seconds
        final = stack.wait_job(job, timeout=120)
        assert final["status"] == "cancelled"
    else:
        assert status == "cancelled"
    # idempotent
    assert stack.client.post(f"/v1/jobs/{job}/cancel").json()["status"] == "cancelled"
    time.sleep(3)
    assert stack.client.get(f"/v1/jobs/{job}").json()["status"] == "cancelled"
    assert stack.client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert_error(stack.client.get(f"/v1/datasets/{ds}"), 404)
