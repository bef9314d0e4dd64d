"""A dead worker never strands a job: /health says "degraded" when jobs wait and no worker
is alive, the reaper runs in workers too and any number of reapers revive a job once, and
`cloze up` restarts its worker after a kill -9 of the whole worker (main and pool child),
the job ending succeeded with one metric row per step."""

import os
import signal
import subprocess
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from tests.inprocess import client, make_app
from tests.stack import CLOZE, ROOT, Stack, corpus_slice


def _stale_running_job(job_id: str, stale_s: float = 3600) -> None:
    from service.db import session_scope
    from service.domain.tables import JobRow, utcnow

    with session_scope() as s:
        s.add(JobRow(id=job_id, type="pretrain", name="stranded", status="running", spec={},
                     dataset_id="ds_missing", attempts=1, started_at=utcnow(),
                     heartbeat_at=utcnow() - timedelta(seconds=stale_s)))


def test_health_is_degraded_when_jobs_wait_with_no_live_worker(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_HEARTBEAT_TIMEOUT_S="2") as app:
        from service.queue import beat_worker

        api = client(app)
        body = api.get("/health").json()
        assert body["status"] == "ok" and body["workers"] == {
            "status": "ok", "live": 0, "waiting_jobs": 0}  # nothing waits: nothing to say
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        assert api.post("/v1/jobs", json={"dataset_id": ds}).status_code == 202
        r = api.get("/health")
        # was {"status": "ok"}: the job would wait forever
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
        assert r.json()["workers"]["live"] == 0 and r.json()["workers"]["waiting_jobs"] == 1
        assert "no live worker" in r.json()["workers"]["status"]
        beat_worker("celery@box")
        assert api.get("/health").json()["status"] == "ok"
        assert api.get("/health").json()["workers"]["live"] == 1
        time.sleep(2.2)  # the heartbeat is older than CLOZE_HEARTBEAT_TIMEOUT_S
        assert api.get("/health").json()["status"] == "degraded"


def test_worker_heartbeats_through_redis(tmp_path, monkeypatch, redis_url):
    with make_app(tmp_path, monkeypatch, CLOZE_BROKER_URL=redis_url,
                  CLOZE_TRAIN_QUEUE=f"sup-{uuid.uuid4().hex[:8]}"):
        from service.queue import beat_worker, live_workers

        assert live_workers() == 0
        beat_worker("celery@a")
        beat_worker("celery@b")
        assert live_workers() == 2
        beat_worker("celery@a", alive=False)
        assert live_workers() == 1
        beat_worker("celery@b", alive=False)


def test_many_reapers_at_once_revive_a_job_once(tmp_path, monkeypatch, fresh_postgres):
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=fresh_postgres,
                  CLOZE_HEARTBEAT_TIMEOUT_S="5"):
        from service import reaper
        from service.db import session_scope
        from service.domain.tables import EventRow, JobRow

        _stale_running_job("job_stranded0000000000")
        start = threading.Barrier(8)
        revived: list[str] = []

        def reap() -> None:
            start.wait()
            revived.extend(reaper.reap_once())

        threads = [threading.Thread(target=reap) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert revived == ["job_stranded0000000000"]
        with session_scope() as s:
            assert s.get(JobRow, "job_stranded0000000000").status == "queued"
            events = s.query(EventRow).filter(EventRow.message.contains("no heartbeat")).all()
            assert len(events) == 1


def test_a_worker_reaps_with_no_api_running(tmp_path, monkeypatch):
    """Only a worker runs (no API process): it re-queues a job whose worker died."""
    with make_app(tmp_path, monkeypatch):
        _stale_running_job("job_orphan000000000000")
    env = {**os.environ, "CLOZE_HOME": str(tmp_path), "CLOZE_REAPER_INTERVAL_S": "1",
           "CLOZE_HEARTBEAT_TIMEOUT_S": "5", "PYTHONUNBUFFERED": "1"}
    for name in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL"):
        env.pop(name, None)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen([*CLOZE, "worker"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import sqlite3

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with sqlite3.connect(tmp_path / "cloze.db") as db:
                rows = db.execute("SELECT message FROM events WHERE job_id = ?",
                                  ("job_orphan000000000000",)).fetchall()
            if any("no heartbeat" in m for (m,) in rows):
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(1)
        else:
            raise AssertionError((tmp_path / "worker.log").read_text())
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()


# The same job as tests/test_faults.py: a tiny model, 60 steps, a checkpoint every 20.
JOB = {"model": {"size": "tiny"}, "tokenizer": {"vocab_size": 800},
       "hyperparameters": {"max_steps": 60, "batch_size": 8, "sequence_length": 64,
                           "warmup_steps": 5, "learning_rate": 1e-3, "seed": 3},
       "log_every": 1, "eval_every": 20, "checkpoint_every": 20}


def _workers(stack: Stack) -> list[psutil.Process]:
    """`cloze up`'s celery worker main process(es) (not their pool children)."""
    found = []
    for p in psutil.Process(stack.pid("up")).children():
        try:  # a killed worker nobody has waited for is a zombie with no command line
            if p.status() != psutil.STATUS_ZOMBIE and "celery" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _wait(predicate, timeout: float, what: str, stack: Stack):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen in {timeout} s\n{stack.logs()}")


@pytest.mark.slow
def test_cloze_up_restarts_a_killed_worker_and_the_job_succeeds(tmp_path: Path, data_dir):
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    env.update({"CLOZE_HEARTBEAT_INTERVAL_S": "0.5", "CLOZE_HEARTBEAT_TIMEOUT_S": "5",
                "CLOZE_REAPER_INTERVAL_S": "1", "CLOZE_RATE_LIMIT_PER_MINUTE": "0"})
    stack = Stack(tmp_path / "up", env, embedded=True)
    try:
        ds = stack.upload("sup.txt", corpus_slice(data_dir / "en-valid.txt.gz", 400_000))
        assert ds.status_code == 201, ds.text
        r = stack.client.post("/v1/jobs", json={"dataset_id": ds.json()["id"], **JOB})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        def checkpointed() -> bool:
            job = stack.client.get(f"/v1/jobs/{job_id}").json()
            steps = [c["step"] for c in
                     stack.client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]]
            return job["progress"]["step"] >= 25 and 20 in steps

        _wait(checkpointed, 600, "step 25 with the step-20 checkpoint", stack)
        # kill -9 the whole worker at once: its main process and its pool child
        [main] = _workers(stack)
        victims = [main, *main.children(recursive=True)]
        assert len(victims) >= 2, "the pool child is training"
        for p in victims:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)

        # `cloze up` starts a new worker; the reaper re-queues the job; it resumes
        restarted = _wait(lambda: [p for p in _workers(stack) if p.pid != main.pid], 120,
                          "a restarted worker", stack)
        assert all(not p.is_running() for p in victims)
        final = stack.wait_job(job_id, timeout=900)
        assert final["status"] == "succeeded", (final, stack.logs())
        assert final["attempts"] == 2
        points = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
        assert [p["step"] for p in points] == list(range(1, 61))  # one row per step
        events = [e["message"] for e in
                  stack.client.get(f"/v1/jobs/{job_id}/events").json()["data"]]
        assert any("no heartbeat" in m for m in events)
        assert any("resuming from the checkpoint at step" in m for m in events)
        health = httpx.get(f"{stack.url}/health", timeout=30).json()
        assert health["status"] == "ok" and health["workers"]["live"] >= 1, health
        assert restarted[0].is_running()
    finally:
        stack.stop()


def test_a_worker_never_forks_in_the_middle_of_a_housekeeping_round():
    """The pool forks a child per job while the heartbeat and reaper threads run; a fork
    during one of their rounds would hand the child a lock held forever (seen: a child hung
    on psycopg's import lock). A fork waits for the round to end."""
    import os
    import threading
    import time

    from workers import celery_app

    entered = threading.Event()

    def round_() -> None:
        with celery_app._fork_guard:
            entered.set()
            time.sleep(0.5)

    thread = threading.Thread(target=round_)
    thread.start()
    entered.wait()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: the guard must be free here, then leave at once
        os._exit(0 if celery_app._fork_guard.acquire(timeout=1) else 1)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert waited >= 0.3, waited


@pytest.mark.slow
def test_killing_cloze_up_takes_its_worker_with_it(tmp_path: Path):
    """kill -9 of `cloze up` alone (not its process group): its worker and the worker's pool
    child quit too, where they used to live on, orphaned."""
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    stack = Stack(tmp_path / "up", env, embedded=True)
    try:
        [main] = _wait(lambda: _workers(stack), 120, "the worker", stack)
        family = [main, *main.children(recursive=True)]
        stack.procs["up"].send_signal(signal.SIGKILL)
        stack.procs["up"].wait(timeout=30)
        gone, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [p.pid for p in alive]
    finally:
        stack.stop()
