"""Faults injected into real processes on Postgres and Redis: a worker killed mid-job, a
duplicate message, a job that crashes every time, Redis and Postgres restarted mid-job, a
corrupted checkpoint; then many clients polling while a job trains."""

import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.stack import Stack, corpus_slice

pytestmark = pytest.mark.slow

JOB = {"model": {"size": "tiny"}, "tokenizer": {"vocab_size": 800},
       "hyperparameters": {"max_steps": 60, "batch_size": 8, "sequence_length": 64,
                           "warmup_steps": 5, "learning_rate": 1e-3, "seed": 3},
       "log_every": 1, "eval_every": 20, "checkpoint_every": 20}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_url, redis_url) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("faults")
    s = Stack(home, {
        "CLOZE_DATABASE_URL": postgres_url, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"faults-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
        "CLOZE_HEARTBEAT_INTERVAL_S": "0.5", "CLOZE_HEARTBEAT_TIMEOUT_S": "5",
        "CLOZE_REAPER_INTERVAL_S": "1", "CLOZE_REQUEUE_AFTER_S": "20",
        "CLOZE_MAX_ATTEMPTS": "3", "CLOZE_RATE_LIMIT_PER_MINUTE": "0",
        "CLOZE_MAX_ACTIVE_JOBS": "100",
    }, embedded=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dataset(stack, data_dir) -> str:
    corpus = corpus_slice(data_dir / "en-valid.txt.gz", 400_000)
    return stack.upload("faults.txt", corpus).json()["id"]


@pytest.fixture(scope="module")
def reference(stack, dataset) -> dict[int, float]:
    """Per-step train losses of the job run straight through, with no fault."""
    job = stack.client.post("/v1/jobs", json={"dataset_id": dataset, **JOB}).json()
    assert stack.wait_job(job["id"], timeout=300)["status"] == "succeeded"
    return losses(stack, job["id"])


def losses(stack: Stack, job_id: str) -> dict[int, float]:
    points = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    steps = [p["step"] for p in points]
    assert steps == list(range(1, len(steps) + 1)), "one metric row per step, none missing"
    return {p["step"]: p["train_loss"] for p in points}


def submit(stack: Stack, dataset: str, **patch) -> str:
    r = stack.client.post("/v1/jobs", json={"dataset_id": dataset, **JOB, **patch})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_for(stack: Stack, job_id: str, predicate, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"condition not met: {job}\n{stack.logs()}")


def checkpoint_steps(stack: Stack, job_id: str) -> list[int]:
    return [c["step"] for c in stack.client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]]


def test_worker_killed_mid_job_resumes_with_identical_losses(stack, dataset, reference):
    job_id = submit(stack, dataset)
    wait_for(stack, job_id, lambda j: j["progress"]["step"] >= 25 and
             20 in checkpoint_steps(stack, job_id))
    stack.kill("worker")  # kill -9 the worker and its pool child
    stack.start_worker()
    final = stack.wait_job(job_id, timeout=300)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    assert losses(stack, job_id) == reference  # bitwise, one row per step
    events = [e["message"] for e in stack.client.get(f"/v1/jobs/{job_id}/events").json()["data"]]
    assert any("resuming from the checkpoint at step" in m for m in events)


def test_duplicate_message_trains_once(stack, dataset):
    from celery import Celery

    job_id = submit(stack, dataset, hyperparameters={**JOB["hyperparameters"], "max_steps": 10})
    app = Celery(broker=stack.env["CLOZE_BROKER_URL"])
    app.send_task("cloze.train_job", kwargs={"job_id": job_id},
                  queue=stack.env["CLOZE_TRAIN_QUEUE"])
    final = stack.wait_job(job_id, timeout=300)
    time.sleep(3)  # give the duplicate time to be delivered and ignored
    assert final["status"] == "succeeded" and final["attempts"] == 1
    losses(stack, job_id)
    events = [e["message"] for e in stack.client.get(f"/v1/jobs/{job_id}/events").json()["data"]]
    assert sum("is ready" in m for m in events) == 1
    trained = [m["job_id"] for m in stack.client.get("/v1/models?limit=100").json()["data"]
               if m["job_id"] is not None]  # imported models have no job
    assert len(trained) == len(set(trained))  # one model per job


def _pool_children(stack: Stack) -> list[psutil.Process]:
    return psutil.Process(stack.pid("worker")).children(recursive=True)


def test_job_that_kills_its_worker_every_time_fails_after_max_attempts(stack, dataset):
    """The worker's pool process dies (as from an OOM kill) on every attempt: the job ends
    failed after 3 attempts with a reason; the message does not loop."""
    job_id = submit(stack, dataset, hyperparameters={**JOB["hyperparameters"],
                                                     "max_steps": 100_000})
    for attempt in (1, 2, 3):
        wait_for(stack, job_id, lambda j, a=attempt: j["status"] == "running" and
                 j["attempts"] == a and j["progress"]["step"] > 0, timeout=180)
        for child in _pool_children(stack):
            child.kill()
    final = stack.wait_job(job_id, timeout=180)
    assert final["status"] == "failed" and final["attempts"] == 3
    assert final["error"]["code"] == "too_many_attempts"
    assert "3 attempts" in final["error"]["message"]
    time.sleep(8)  # longer than the heartbeat timeout: nothing picks it up again
    assert stack.client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 3


def test_transient_error_retries_then_fails_with_reason(stack, dataset):
    """A job whose dataset file vanished from storage: retried, then failed with a reason."""
    ds = stack.upload("gone.txt", b"word " * 5000 + b"\n").json()["id"]
    key = next((stack.home / "objects" / "datasets" / ds).iterdir())
    key.unlink()
    job_id = submit(stack, ds)
    final = stack.wait_job(job_id, timeout=180)
    assert final["status"] == "failed" and final["attempts"] == 3
    assert final["error"]["code"] == "internal_error" and "3 attempts" in \
        final["error"]["message"]


def _restart(stop: list[str], start: list[str], down_s: float, while_down) -> None:
    subprocess.run(stop, check=True, capture_output=True)
    try:
        time.sleep(down_s)
        while_down()
    finally:
        subprocess.run(start, check=True, capture_output=True)


def _fast_503(stack: Stack, path: str) -> None:
    t0 = time.monotonic()
    r = httpx.get(f"{stack.url}{path}", timeout=30)
    assert r.status_code == 503, r.text
    assert time.monotonic() - t0 < 10
    body = r.json()
    assert body.get("status") == "degraded" or body["error"]["code"] == "service_unavailable"


def test_redis_restart_mid_job(stack, dataset, reference):
    job_id = submit(stack, dataset)
    wait_for(stack, job_id, lambda j: j["progress"]["step"] >= 10)

    def while_down() -> None:
        _fast_503(stack, "/health")
        t0 = time.monotonic()
        r = stack.client.post("/v1/jobs", json={"dataset_id": dataset, **JOB})
        assert r.status_code == 503 and time.monotonic() - t0 < 15, r.text

    _restart(["redis-cli", "-p", "6379", "shutdown", "nosave"],
             ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
              "--save", "", "--appendonly", "no"], 2, while_down)
    final = stack.wait_job(job_id, timeout=300)
    assert final["status"] == "succeeded", final
    assert losses(stack, job_id) == reference


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def test_postgres_restart_mid_job(stack, dataset, reference):
    if not Path("/etc/postgresql").exists():
        pytest.skip("no local Postgres cluster to restart")
    job_id = submit(stack, dataset)
    wait_for(stack, job_id, lambda j: j["progress"]["step"] >= 10)

    def while_down() -> None:
        _fast_503(stack, "/health")
        _fast_503(stack, f"/v1/jobs/{job_id}")

    _restart([*_pg_cluster(), "stop", "-m", "fast"], [*_pg_cluster(), "start"], 3, while_down)
    final = stack.wait_job(job_id, timeout=300)
    assert final["status"] == "succeeded", final
    assert losses(stack, job_id) == reference  # nothing lost, nothing duplicated


def test_corrupted_checkpoint_falls_back_to_the_previous_one(stack, dataset, reference):
    job_id = submit(stack, dataset)
    wait_for(stack, job_id, lambda j: 40 in checkpoint_steps(stack, job_id), timeout=300)
    stack.kill("worker")
    weights = stack.home / "objects" / "jobs" / job_id / "checkpoints" / "step-00000040"
    target = weights / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    stack.start_worker()
    final = stack.wait_job(job_id, timeout=300)
    assert final["status"] == "succeeded" and final["attempts"] == 2
    events = [e["message"] for e in stack.client.get(f"/v1/jobs/{job_id}/events").json()["data"]]
    assert any("step 40 failed verification" in m for m in events)
    assert any("resuming from the checkpoint at step 20" in m for m in events)
    assert losses(stack, job_id) == reference
    assert checkpoint_steps(stack, job_id) == [20, 40, 60]


def test_load_many_clients_polling_while_a_job_trains(stack, dataset):
    job_id = submit(stack, dataset, hyperparameters={**JOB["hyperparameters"], "max_steps": 400})
    wait_for(stack, job_id, lambda j: j["status"] == "running")
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + 15

    def client() -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as c:
            since = 0
            while time.monotonic() < stop:
                for path, params in ((f"/v1/jobs/{job_id}", None),
                                     (f"/v1/jobs/{job_id}/metrics", {"since_step": since})):
                    t0 = time.perf_counter()
                    r = c.get(path, params=params)
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    elif "metrics" in path and r.json()["data"]:
                        since = r.json()["data"][-1]["step"]

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stack.client.post(f"/v1/jobs/{job_id}/cancel")
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nload: {len(latencies)} requests from 16 clients in 15 s "
          f"({len(latencies) / 15:.0f}/s), median {statistics.median(latencies) * 1000:.0f} ms,"
          f" p99 {p99 * 1000:.0f} ms, errors {len(errors)}")
    assert not errors, errors[:5]
    assert len(latencies) > 200
    stack.wait_job(job_id, timeout=120)
