"""Job statuses move only through service/domain/lifecycle.py, each move a conditional
UPDATE: a duplicate delivery, a second finish or a second reaper does nothing. And the
domain's own exceptions (service/domain/refusals.py) reach clients exactly as the HTTP
errors they replaced did: same status, code, message, param and Retry-After."""

import threading
from datetime import timedelta

import pytest

from tests.inprocess import client, make_app

ALL_STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled' or 'paused'"


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'life.db'}"
    return str(request.getfixturevalue("fresh_postgres"))


def _add_job(**fields) -> str:
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    job_id = new_id("job")
    with session_scope() as s:
        s.add(lifecycle.new_job(id=job_id, type="pretrain", name="t", spec={},
                                dataset_id="ds_x", **fields))
    return job_id


def _row(job_id: str):
    from service.db import session_scope
    from service.domain.tables import JobRow

    with session_scope() as s:
        row = s.get(JobRow, job_id)
        s.expunge(row)
        return row


def _do(move, *args, **kwargs):
    from service.db import session_scope

    with session_scope() as s:
        return move(s, *args, **kwargs)


def test_each_move_happens_once(tmp_path, monkeypatch, database):
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=database):
        from service.domain import lifecycle
        from service.domain.lifecycle import Claim, JobStatus

        job = _add_job()
        assert _row(job).status == "queued"
        assert _do(lifecycle.claim, job, max_attempts=3) is Claim.CLAIMED
        assert _do(lifecycle.claim, job, max_attempts=3) is Claim.DUPLICATE  # redelivered
        row = _row(job)
        assert (row.status, row.attempts) == ("running", 1) and row.started_at is not None
        assert _do(lifecycle.heartbeat, job)
        assert _do(lifecycle.requeue, job) and not _do(lifecycle.requeue, job)
        assert _row(job).status == "queued"
        assert _do(lifecycle.claim, job, max_attempts=3) is Claim.CLAIMED
        assert _do(lifecycle.finish, job, JobStatus.SUCCEEDED, model_id="m_1")
        # a late failure (or the reaper's attempt finishing too) changes nothing
        assert not _do(lifecycle.finish, job, JobStatus.FAILED, error_code="x")
        assert not _do(lifecycle.heartbeat, job)
        row = _row(job)
        assert (row.status, row.model_id, row.error_code, row.attempts) == \
            ("succeeded", "m_1", None, 2)
        with pytest.raises(ValueError):
            _do(lifecycle.finish, job, JobStatus.QUEUED)

        worn = _add_job(attempts=3)  # every attempt so far killed its worker
        assert _do(lifecycle.claim, worn, max_attempts=3) is Claim.EXHAUSTED
        assert _do(lifecycle.claim, worn, max_attempts=3) is Claim.DUPLICATE
        row = _row(worn)
        assert (row.status, row.error_code) == ("failed", "too_many_attempts")
        assert row.error_message.startswith("gave up after 3 attempts")

        queued, running = _add_job(), _add_job()
        _do(lifecycle.claim, running, max_attempts=3)
        _do(lifecycle.cancel, queued)
        _do(lifecycle.cancel, running)
        row = _row(queued)
        assert (row.status, row.cancel_requested) == ("cancelled", True) and row.finished_at
        assert _do(lifecycle.claim, queued, max_attempts=3) is Claim.DUPLICATE  # never starts
        row = _row(running)  # asked to stop; the worker records the end
        assert (row.status, row.cancel_requested, row.finished_at) == ("running", True, None)
        assert _do(lifecycle.finish, running, JobStatus.CANCELLED)
        _do(lifecycle.cancel, running)  # cancelling an ended job changes nothing
        assert _row(running).status == "cancelled"


def test_reaper_moves_are_conditional(tmp_path, monkeypatch, database):
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=database):
        from service.db import session_scope
        from service.domain import lifecycle
        from service.domain.tables import EventRow, JobRow, utcnow

        hour_ago = utcnow() - timedelta(hours=1)
        stranded = _add_job()
        _do(lifecycle.claim, stranded, max_attempts=3)
        alive = _add_job()
        _do(lifecycle.claim, alive, max_attempts=3)
        lost = _add_job(enqueued_at=hour_ago)
        fresh = _add_job(enqueued_at=utcnow())
        with session_scope() as s:
            s.get(JobRow, stranded).heartbeat_at = hour_ago
        reap = {"heartbeat_timeout_s": 600, "requeue_after_s": 600}
        assert sorted(_do(lifecycle.reap, **reap)) == sorted([stranded, lost])
        assert _row(stranded).status == "queued" and _row(alive).status == "running"
        assert _row(lost).status == "queued" and _row(fresh).enqueued_at < _row(lost).enqueued_at
        assert _do(lifecycle.reap, **reap) == []  # a second reaper finds nothing to do
        with session_scope() as s:
            assert s.query(EventRow).filter(EventRow.job_id == stranded).count() == 1


def test_concurrent_deliveries_claim_once(tmp_path, monkeypatch, fresh_postgres):
    """Eight deliveries of one message at the same moment: one attempt trains."""
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=fresh_postgres):
        from service.domain import lifecycle
        from service.domain.lifecycle import Claim

        job = _add_job()
        start = threading.Barrier(8)
        results: list[Claim] = []

        def deliver() -> None:
            start.wait()
            results.append(_do(lifecycle.claim, job, max_attempts=3))

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [Claim.CLAIMED] + [Claim.DUPLICATE] * 7
        assert _row(job).attempts == 1


def test_domain_refusals_keep_their_http_answers(tmp_path, monkeypatch):
    """What each domain exception becomes for the client, as the ApiErrors it replaced."""
    with make_app(tmp_path, monkeypatch, CLOZE_MAX_ACTIVE_JOBS="1") as app:
        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        r = api.post("/v1/jobs", json={"dataset_id": ds}, headers={"Idempotency-Key": "k1"})
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        job = r.json()["id"]
        listed = api.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        assert [j["id"] for j in listed] == [job] and listed[0]["status"] == "queued"
        assert api.get("/v1/jobs", params={"status": "running"}).json()["data"] == []

        def refused(r, status: int, code: str, message: str, param: str | None) -> None:
            assert r.status_code == status, r.text
            assert r.json() == {"error": {"code": code, "message": message, "param": param}}

        refused(api.get("/v1/jobs", params={"status": "bogus"}), 422, "invalid_request",
                f"status: Input should be {ALL_STATUSES}", "status")
        r = api.post("/v1/jobs", json={"dataset_id": ds, "name": "second"})
        refused(r, 429, "too_many_jobs", "you already have 1 jobs queued, running or paused "
                "(the limit is 1); wait for one to finish or cancel one", None)
        assert r.headers["Retry-After"] == "60"
        refused(api.post("/v1/jobs", json={"dataset_id": ds, "name": "other"},
                         headers={"Idempotency-Key": "k1"}), 422, "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request",
                "Idempotency-Key")
        refused(api.post("/v1/jobs", json={"dataset_id": "ds_nope"}), 422, "invalid_request",
                "dataset_id: no dataset with id 'ds_nope'", "dataset_id")
        refused(api.delete(f"/v1/datasets/{ds}"), 409, "conflict",
                f"dataset {ds} is in use by job {job}; cancel it or wait until it ends", None)
        refused(api.get("/v1/jobs/job_nope"), 404, "not_found", "no job with id 'job_nope'",
                None)
        refused(api.get("/v1/models/m_nope"), 404, "not_found", "no model with id 'm_nope'",
                None)
        refused(api.get("/v1/datasets/ds_nope"), 404, "not_found",
                "no dataset with id 'ds_nope'", None)
        refused(api.post("/v1/datasets", files={"file": ("a.xlsx", b"a,b\n")}), 415,
                "unsupported_format", "unsupported file type 'a.xlsx': upload .txt, .jsonl, "
                ".json, .conll, .csv, .tsv or .parquet (or .txt.gz, .jsonl.gz, .json.gz, "
                ".conll.gz, .csv.gz, .tsv.gz)", "file")
        refused(api.post("/v1/datasets", files={"file": ("e.txt", b"")}), 422, "empty_file",
                "the uploaded file is empty", "file")
        refused(api.post("/v1/models/import", files={"file": ("m.tar.gz", b"not an archive")}),
                415, "unsupported_format", "file: upload a .tar.gz, .tar or .zip archive of a "
                "Hugging Face model directory", "file")

        cancelled = api.post(f"/v1/jobs/{job}/cancel").json()
        assert (cancelled["status"], cancelled["cancel_requested"]) == ("cancelled", True)
        assert cancelled["finished_at"] is not None
        assert api.delete(f"/v1/datasets/{ds}").status_code == 204  # no longer in use


def test_a_worker_attempt_ends_once_and_a_redelivery_is_skipped(tmp_path, monkeypatch):
    """workers/runner.py through lifecycle: claim, then one terminal state with its reason;
    the same message delivered again neither trains nor changes the record."""
    with make_app(tmp_path, monkeypatch) as app:
        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("tiny.txt", b"just a few words\n")})
        job = api.post("/v1/jobs", json={"dataset_id": ds.json()["id"],
                                         "model": {"size": "tiny"},
                                         "tokenizer": {"vocab_size": 300}}).json()["id"]
        from workers import runner

        runner.run_job(job)
        first = api.get(f"/v1/jobs/{job}").json()
        assert (first["status"], first["error"]["code"], first["attempts"]) == \
            ("failed", "bad_data", 1), first
        runner.run_job(job)  # a duplicate delivery
        assert api.get(f"/v1/jobs/{job}").json() == first
        events = api.get(f"/v1/jobs/{job}/events").json()["data"]
        assert [e["level"] for e in events].count("error") == 1


@pytest.mark.slow
def test_a_worker_attempt_succeeds_or_is_cancelled_once(tmp_path, monkeypatch):
    """runner.run_job in this process: a short job ends succeeded with its model; a long one
    cancelled while running ends cancelled with no model; redeliveries change neither."""
    import time

    with make_app(tmp_path, monkeypatch) as app:
        api = client(app)
        text = b"".join(b"the quick brown fox jumps over the lazy dog %d\n" % i
                        for i in range(3000))
        ds = api.post("/v1/datasets", files={"file": ("c.txt", text)}).json()["id"]
        spec = {"dataset_id": ds, "model": {"size": "tiny"}, "tokenizer": {"vocab_size": 300},
                "hyperparameters": {"max_steps": 3, "batch_size": 4, "sequence_length": 32,
                                    "warmup_steps": 1}}
        from workers import runner

        short = api.post("/v1/jobs", json=spec).json()["id"]
        runner.run_job(short)
        done = api.get(f"/v1/jobs/{short}").json()
        assert (done["status"], done["attempts"]) == ("succeeded", 1) and done["model_id"]
        runner.run_job(short)
        assert api.get(f"/v1/jobs/{short}").json() == done

        spec["hyperparameters"]["max_steps"] = 100_000
        long = api.post("/v1/jobs", json=spec).json()["id"]
        worker = threading.Thread(target=runner.run_job, args=(long,))
        worker.start()
        deadline = time.monotonic() + 120
        while api.get(f"/v1/jobs/{long}").json()["progress"]["step"] < 1:
            assert time.monotonic() < deadline and worker.is_alive(), "never got going"
            time.sleep(0.2)
        asked = api.post(f"/v1/jobs/{long}/cancel").json()
        assert (asked["status"], asked["cancel_requested"]) == ("running", True)
        worker.join(timeout=120)
        ended = api.get(f"/v1/jobs/{long}").json()
        assert (ended["status"], ended["model_id"]) == ("cancelled", None), ended
        runner.run_job(long)
        assert api.get(f"/v1/jobs/{long}").json() == ended
