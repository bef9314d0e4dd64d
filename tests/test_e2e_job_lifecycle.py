"""Job lifecycle through the API on Postgres + Redis with a real worker: cancel a running
job, a corpus the engine cannot use fails the job with a reason, lists paginate."""

import time

import pytest

from tests.stack import Stack, corpus_slice

LONG_JOB = {"model": {"size": "tiny"}, "tokenizer": {"vocab_size": 1000},
            "hyperparameters": {"max_steps": 100_000, "batch_size": 8, "sequence_length": 32,
                                "warmup_steps": 10},
            "log_every": 1, "eval_every": 1000, "checkpoint_every": 100_000}


@pytest.mark.slow
def test_cancel_running_job_stops_within_a_few_steps(pg_redis_stack: Stack, data_dir):
    stack = pg_redis_stack
    ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 200_000)).json()
    job = stack.client.post("/v1/jobs", json={"dataset_id": ds["id"], **LONG_JOB}).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = stack.client.get(f"/v1/jobs/{job['id']}").json()
        if running["status"] == "running" and running["progress"]["step"] >= 5:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"job never got going: {running}\n{stack.logs()}")
    assert running["progress"]["tokens_per_second"] > 0
    assert running["progress"]["eta_seconds"] > 0
    r = stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    asked_at = r.json()["progress"]["step"]
    final = stack.wait_job(job["id"], timeout=60)
    assert final["status"] == "cancelled" and final["model_id"] is None
    # cooperative: it stopped within a few steps (the flag is read once a second)
    steps = [p["step"] for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]]
    assert steps[-1] - asked_at < 200, (asked_at, steps[-1])
    assert stack.client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    # the worker is free again: the next job runs
    small = {**LONG_JOB, "hyperparameters": {**LONG_JOB["hyperparameters"], "max_steps": 5,
                                             "warmup_steps": 1}}
    nxt = stack.client.post("/v1/jobs", json={"dataset_id": ds["id"], **small}).json()
    assert stack.wait_job(nxt["id"], timeout=120)["status"] == "succeeded"


@pytest.mark.slow
def test_corpus_too_small_fails_the_job_with_a_reason(pg_redis_stack: Stack):
    stack = pg_redis_stack
    ds = stack.upload("tiny.txt", b"just a few words here\n").json()
    job = stack.client.post("/v1/jobs", json={"dataset_id": ds["id"], "model": {"size": "tiny"},
                                              "tokenizer": {"vocab_size": 300}}).json()
    final = stack.wait_job(job["id"], timeout=120)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "bad_data"
    assert "too small" in final["error"]["message"]
    assert "Traceback" not in final["error"]["message"]
    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["level"] == "error"


def test_lists_paginate_newest_first(pg_redis_stack: Stack):
    stack = pg_redis_stack
    ids = [stack.upload(f"p{i}.txt", f"doc {i}\n".encode()).json()["id"] for i in range(5)]
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = stack.client.get("/v1/datasets", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert [i for i in seen if i in ids] == ids[::-1]
    assert len(seen) == len(set(seen))


@pytest.mark.slow
def test_job_too_big_for_its_worker_fails_fast_with_a_reason(pg_redis_stack: Stack):
    stack = pg_redis_stack
    ds = stack.upload("big.txt", b"some words to train on\n" * 50).json()
    job = stack.client.post("/v1/jobs", json={
        "dataset_id": ds["id"], "model": {"size": "base", "max_position_embeddings": 4096},
        "hyperparameters": {"batch_size": 4096, "sequence_length": 4096}}).json()
    final = stack.wait_job(job["id"], timeout=120)
    assert final["status"] == "failed" and final["attempts"] == 1
    assert final["error"]["code"] == "too_big" and "GiB" in final["error"]["message"]
    assert stack.client.get("/health").status_code == 200  # the worker is still there
