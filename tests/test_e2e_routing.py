"""Queues by device through real processes on Postgres and Redis: two CPU workers train two
jobs at once; a cuda job on this CPU-only stack waits and says why, while a cpu job runs."""

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.stack import Stack, corpus_slice

pytestmark = pytest.mark.slow

# Long enough to be seen running side by side (each is cancelled once it is): a few
# seconds of tiny BERT steps on a slow CPU.
LONG = {"model": {"size": "tiny"}, "tokenizer": {"vocab_size": 800},
        "hyperparameters": {"max_steps": 5000, "batch_size": 4, "sequence_length": 32,
                            "warmup_steps": 5},
        "log_every": 1, "eval_every": 5000, "checkpoint_every": 5000,
        "resources": {"device": "cpu"}}
SHORT = {**LONG, "hyperparameters": {"max_steps": 5, "batch_size": 4, "sequence_length": 32,
                                     "warmup_steps": 1}, "eval_every": 5, "checkpoint_every": 5}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_url, redis_url) -> Iterator[Stack]:
    """`cloze api` and two `cloze worker --device cpu` processes."""
    home = tmp_path_factory.mktemp("routing")
    s = Stack(home, {
        "CLOZE_DATABASE_URL": postgres_url, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"routing-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
        "CLOZE_HEARTBEAT_INTERVAL_S": "1", "CLOZE_RATE_LIMIT_PER_MINUTE": "0",
        "CLOZE_MAX_ACTIVE_JOBS": "100",
    }, embedded=False)
    s.start_worker("worker2", "--device", "cpu")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dataset(stack: Stack, data_dir) -> str:
    corpus = corpus_slice(data_dir / "en-valid.txt.gz", 60_000)
    return stack.upload("routing.txt", corpus).json()["id"]


def submit(stack: Stack, dataset: str, job: dict) -> dict:
    r = stack.client.post("/v1/jobs", json={"dataset_id": dataset, **job})
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(stack: Stack, predicate, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout}s\n{stack.logs()}")


def live_workers(stack: Stack) -> int:
    return stack.client.get("/health").json()["workers"].get("live") or 0


def test_two_workers_train_two_jobs_at_once(stack: Stack, dataset: str):
    wait_for(stack, lambda: live_workers(stack) >= 2)
    first, second = submit(stack, dataset, LONG), submit(stack, dataset, LONG)
    ids = (first["id"], second["id"])

    def both_training() -> bool:
        jobs = [stack.client.get(f"/v1/jobs/{i}").json() for i in ids]
        assert all(j["status"] in ("queued", "running") for j in jobs), jobs
        return all(j["status"] == "running" and j["progress"]["step"] >= 1 for j in jobs)

    wait_for(stack, both_training)
    for job_id in ids:
        stack.client.post(f"/v1/jobs/{job_id}/cancel")
    for job_id in ids:
        assert stack.wait_job(job_id, timeout=120)["status"] == "cancelled"


def test_a_cuda_job_waits_with_its_reason_while_a_cpu_job_runs(stack: Stack, dataset: str):
    wait_for(stack, lambda: live_workers(stack) >= 2)
    cuda = submit(stack, dataset, {**SHORT, "resources": {"device": "cuda"}})
    assert cuda["spec"]["resources"]["device"] == "cuda"
    cpu = submit(stack, dataset, {**SHORT, "priority": 7})
    assert stack.wait_job(cpu["id"], timeout=300)["status"] == "succeeded"
    waiting = stack.client.get(f"/v1/jobs/{cuda['id']}").json()
    assert waiting["status"] == "queued" and waiting["attempts"] == 0
    assert "no worker serves" in waiting["waiting_reason"]
    assert waiting["waiting_reason"].split("serves ")[1].startswith(
        f"{stack.env['CLOZE_TRAIN_QUEUE']}.cuda;")
    assert stack.client.get(f"/v1/jobs/{cpu['id']}").json()["waiting_reason"] is None
    # Cancelled, it says nothing more about waiting.
    cancelled = stack.client.post(f"/v1/jobs/{cuda['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["waiting_reason"] is None


def test_an_auto_job_goes_to_the_cpu_workers_when_no_gpu_worker_is_alive(stack: Stack,
                                                                          dataset: str):
    job = submit(stack, dataset, {**SHORT, "resources": {"device": "auto"}})
    assert job["waiting_reason"] is None  # CPU workers are alive: it waits its turn
    assert stack.wait_job(job["id"], timeout=300)["status"] == "succeeded"


def test_embedded_stack_routes_by_device_too(embedded_stack: Stack, data_dir):
    """`cloze up` (SQLite, the filesystem broker): its one worker serves train.cpu only, so
    a cuda job waits with the reason and a cpu job is taken."""
    s = embedded_stack
    wait_for(s, lambda: (s.client.get("/health").json()["workers"].get("live") or 0) >= 1)
    ds = s.upload("routing.txt", corpus_slice(data_dir / "en-valid.txt.gz", 60_000)).json()
    cuda = submit(s, ds["id"], {**SHORT, "resources": {"device": "cuda"}})
    assert "no worker serves train.cuda;" in cuda["waiting_reason"]
    cpu = submit(s, ds["id"], SHORT)
    assert cpu["waiting_reason"] is None
    assert s.wait_job(cpu["id"], timeout=300)["status"] == "succeeded"
    assert s.client.get(f"/v1/jobs/{cuda['id']}").json()["status"] == "queued"
    s.client.post(f"/v1/jobs/{cuda['id']}/cancel")
