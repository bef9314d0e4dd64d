"""Multi-process jobs (resources.processes 2) through the API on Postgres and Redis with a
real worker, which runs them under torchrun with 2 gloo processes: per-step losses equal
the 1-process job's at the same global batch; a job whose rank 1 is killed mid-run, or
whose worker is killed, is retried from its checkpoint and trains on exactly as if never
killed (no rank outlives its worker); a cancel stops every rank; a paused job resumes
exactly; a 2-process fine-tuning job matches the 1-process one, an fsdp job the ddp one."""

import gzip
import json
import signal
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from tests.stack import Stack, corpus_slice

pytestmark = pytest.mark.slow

STEPS, CHECKPOINT_EVERY = 40, 10
JOB = {"model": {"size": "tiny"}, "tokenizer": {"vocab_size": 800},
       "hyperparameters": {"max_steps": STEPS, "batch_size": 8, "sequence_length": 64,
                           "warmup_steps": 5, "learning_rate": 1e-3, "seed": 3,
                           "precision": "fp32"},
       "log_every": 1, "eval_every": STEPS, "checkpoint_every": CHECKPOINT_EVERY}
TWO = {"resources": {"processes": 2}}
# Float summation order (each rank sums half the batch, gloo sums the halves), slightly
# amplified by Adam over the steps.
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_url, redis_url) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("multiprocess")
    s = Stack(home, {
        "CLOZE_DATABASE_URL": postgres_url, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"mp-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
        "CLOZE_MAX_ATTEMPTS": "3", "CLOZE_RATE_LIMIT_PER_MINUTE": "0",
        "CLOZE_STOP_POLL_S": "0",
        # A killed worker's job is re-queued by the next worker's reaper within seconds.
        "CLOZE_HEARTBEAT_INTERVAL_S": "0.5", "CLOZE_HEARTBEAT_TIMEOUT_S": "5",
        "CLOZE_REAPER_INTERVAL_S": "1", "CLOZE_REQUEUE_AFTER_S": "20",
    }, embedded=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dataset(stack, data_dir) -> str:
    corpus = corpus_slice(data_dir / "en-valid.txt.gz", 200_000)
    return stack.upload("mp.txt", corpus).json()["id"]


def submit(stack: Stack, dataset: str, **patch) -> str:
    r = stack.client.post("/v1/jobs", json={"dataset_id": dataset, **JOB, **patch})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def losses(stack: Stack, job_id: str) -> list[float]:
    points = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [p["step"] for p in points] == list(range(1, STEPS + 1)), "a row per step"
    return [p["train_loss"] for p in points]


def events(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.client.get(f"/v1/jobs/{job_id}/events").json()["data"]]


def ranks(stack: Stack) -> dict[int, psutil.Process]:
    """This stack's running ranks (torchrun's children running workers.multiprocess)."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "workers.multiprocess" in cmdline and "torch.distributed.run" not in cmdline:
            try:
                env = proc.environ()
            except psutil.Error:
                continue
            if env.get("CLOZE_TRAIN_QUEUE") == stack.env["CLOZE_TRAIN_QUEUE"]:
                found[int(env["RANK"])] = proc
    return found


@pytest.fixture(scope="module")
def two_process_job(stack, dataset) -> dict:
    """The 2-process job run straight through."""
    job_id = submit(stack, dataset, **TWO)
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["model_id"] and job["attempts"] == 1
    assert "training on 2 processes (gloo), each on its slice of every batch" in \
        events(stack, job_id)
    return job


@pytest.fixture(scope="module")
def two_process_losses(stack, two_process_job) -> list[float]:
    return losses(stack, two_process_job["id"])


def test_two_processes_match_one_at_equal_global_batch(stack, dataset, two_process_losses):
    one = submit(stack, dataset)
    assert stack.wait_job(one, timeout=400)["status"] == "succeeded"
    assert two_process_losses == pytest.approx(losses(stack, one), rel=RELATIVE_TOLERANCE)


def test_a_killed_rank_fails_the_attempt_and_the_job_resumes_exactly(stack, dataset,
                                                                     two_process_losses):
    job_id = submit(stack, dataset, **TWO)
    stack.wait_until(job_id, lambda j: j["progress"]["step"] > CHECKPOINT_EVERY + 2,
                     "a checkpoint")
    ranks(stack)[1].send_signal(signal.SIGKILL)

    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 2
    said = events(stack, job_id)
    assert any("attempt 1 failed (RanksFailed); retrying" in m for m in said), said
    assert any(m.startswith("attempt 2: resuming from the checkpoint at step ") for m in said)
    assert losses(stack, job_id) == two_process_losses


def test_a_killed_worker_leaves_no_rank_training_and_the_job_resumes_exactly(
        stack, dataset, two_process_losses):
    """torchrun starts each rank in a session of its own, out of reach of a kill of the
    worker's process group: they end with it all the same (PR_SET_PDEATHSIG)."""
    job_id = submit(stack, dataset, **TWO)
    stack.wait_until(job_id, lambda j: j["progress"]["step"] > CHECKPOINT_EVERY + 2,
                     "a checkpoint")
    assert sorted(ranks(stack)) == [0, 1]
    stack.kill("worker")  # kill -9 the worker, its pool process and torchrun
    deadline = time.monotonic() + 20
    while ranks(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks(stack), "ranks outlived their worker"
    stack.start_worker()
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 2
    assert losses(stack, job_id) == two_process_losses


def test_a_cancelled_two_process_job_stops_on_every_rank(stack, dataset):
    job_id = submit(stack, dataset, **TWO)
    stack.wait_until(job_id, lambda j: j["progress"]["step"] >= 3, "first steps")
    assert stack.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_job(job_id, timeout=120)
    assert job["status"] == "cancelled", (job, stack.logs())
    assert job["progress"]["step"] < STEPS and job["model_id"] is None
    assert any(m.startswith("stopped at step ") for m in events(stack, job_id))
    deadline = time.monotonic() + 20
    while ranks(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks(stack)


def test_a_paused_two_process_job_resumes_exactly(stack, dataset, two_process_losses):
    job_id = submit(stack, dataset, **TWO)
    stack.wait_until(job_id, lambda j: j["progress"]["step"] >= 3, "first steps")
    assert stack.client.post(f"/v1/jobs/{job_id}/pause").status_code == 200
    paused = stack.wait_until(job_id, lambda j: j["status"] == "paused", "the pause")
    assert 3 <= paused["progress"]["step"] < STEPS
    assert stack.client.post(f"/v1/jobs/{job_id}/resume").status_code == 200
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert losses(stack, job_id) == two_process_losses


def test_two_process_fine_tuning_matches_one(stack, data_dir, two_process_job):
    """A few steps of text classification on the 2-process job's model, on 1 and on 2
    processes: the same per-step losses and eval, and each publishes a classifier."""
    with gzip.open(data_dir / "spamassassin-sample.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f][::10]  # both classes, ham first
    body = "".join(json.dumps({"text": r["text"][:300], "label": r["label"]}) + "\n"
                   for r in records)
    ds = stack.upload("spam.jsonl", body.encode()).json()["id"]
    spec = {"type": "finetune", "task": "text_classification", "dataset_id": ds,
            "base_model_id": two_process_job["model_id"], "log_every": 1,
            "hyperparameters": {"max_steps": 4, "batch_size": 8, "sequence_length": 32,
                                "learning_rate": 1e-3, "dropout": 0.0, "precision": "fp32"}}
    curves = []
    for processes in (1, 2):
        r = stack.client.post("/v1/jobs", json={**spec, "resources": {"processes": processes}})
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["id"], timeout=400)
        assert job["status"] == "succeeded", (job, stack.logs())
        model = stack.client.get(f"/v1/models/{job['model_id']}").json()
        assert model["task"] == "text-classification"
        points = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
        curves.append(([p["train_loss"] for p in points if "train_loss" in p],
                       [p["eval_loss"] for p in points if "eval_loss" in p]))
    (one, one_eval), (two, two_eval) = curves
    assert len(one) == 4 and two == pytest.approx(one, rel=RELATIVE_TOLERANCE)
    assert two_eval == pytest.approx(one_eval, rel=RELATIVE_TOLERANCE)


def test_an_fsdp_job_trains_as_the_ddp_one(stack, dataset, two_process_losses):
    """resources.strategy fsdp: the model sharded among the 2 processes, the same curve."""
    job_id = submit(stack, dataset, resources={"processes": 2, "strategy": "fsdp"})
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["model_id"]
    assert ("training on 2 processes (gloo), each on its slice of every batch, the model "
            "sharded among them (fsdp)") in events(stack, job_id)
    assert losses(stack, job_id) == pytest.approx(two_process_losses, rel=RELATIVE_TOLERANCE)
