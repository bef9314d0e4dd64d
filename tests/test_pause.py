"""Pause and resume by the owner, in this process: the state rules of
POST /v1/jobs/{id}/pause and /resume (queued and paused at once, running asked to pause
and moved by its worker, 409 for a finished, cancelling or not-paused job, 404 for another
owner's), cancel of a paused job, the job limit counting paused jobs, the reaper leaving
paused jobs alone, the stream's status ranks and the Prometheus count."""

from datetime import timedelta

import pytest

from tests.inprocess import client, make_app, make_key


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pause.db'}"
    return str(request.getfixturevalue("fresh_postgres"))


def _claim(job_id: str) -> None:
    """What a worker's claim does: queued -> running as a new attempt."""
    from service.db import session_scope
    from service.domain import lifecycle

    with session_scope() as s:
        assert lifecycle.claim(s, job_id, max_attempts=3) is lifecycle.Claim.CLAIMED


def _worker_pauses(job_id: str) -> bool:
    """What a worker does once it has checkpointed a pausing job."""
    from service.db import session_scope
    from service.domain import lifecycle

    with session_scope() as s:
        return lifecycle.pause_reached(s, job_id)


def _refused(r, status: int, code: str, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"] == message, r.text


def test_pause_and_resume_state_rules(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_MAX_ACTIVE_JOBS="2") as app:
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        bob = client(app, Authorization=f"Bearer {make_key('bob')}")
        ds = alice.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        job = alice.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]

        # Another owner's job is as unknown as a made-up id.
        for action in ("pause", "resume"):
            _refused(bob.post(f"/v1/jobs/{job}/{action}"), 404, "not_found",
                     f"no job with id {job!r}")
            _refused(alice.post(f"/v1/jobs/job_nope/{action}"), 404, "not_found",
                     "no job with id 'job_nope'")

        # queued -> paused at once; pausing again changes nothing.
        _refused(alice.post(f"/v1/jobs/{job}/resume"), 409, "job_not_paused",
                 f"job {job} is queued; only a paused job can be resumed")
        r = alice.post(f"/v1/jobs/{job}/pause")
        assert r.status_code == 200 and r.json()["status"] == "paused", r.text
        assert alice.post(f"/v1/jobs/{job}/pause").json()["status"] == "paused"
        assert alice.get(f"/v1/jobs/{job}").json()["status"] == "paused"
        assert [j["id"] for j in alice.get("/v1/jobs", params={"status": "paused"})
                .json()["data"]] == [job]
        events = [e["message"] for e in alice.get(f"/v1/jobs/{job}/events").json()["data"]]
        assert events == ["paused at step 0"]

        # A paused job counts toward the job limit (its owner may resume it any time).
        second = alice.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]
        _refused(alice.post("/v1/jobs", json={"dataset_id": ds}), 429, "too_many_jobs",
                 "you already have 2 jobs queued, running or paused (the limit is 2); wait "
                 "for one to finish or cancel one")
        # ... and keeps its dataset in use.
        assert alice.delete(f"/v1/datasets/{ds}").status_code == 409

        # paused -> queued; resuming again is a conflict.
        r = alice.post(f"/v1/jobs/{job}/resume")
        assert r.status_code == 200 and r.json()["status"] == "queued", r.text
        _refused(alice.post(f"/v1/jobs/{job}/resume"), 409, "job_not_paused",
                 f"job {job} is queued; only a paused job can be resumed")

        # running: asked to pause; paused once its worker has checkpointed.
        _claim(job)
        r = alice.post(f"/v1/jobs/{job}/pause").json()
        assert (r["status"], r["pause_requested"]) == ("running", True), r
        _refused(alice.post(f"/v1/jobs/{job}/resume"), 409, "job_not_paused",
                 f"job {job} is running (it is still pausing: resume it once it is paused); "
                 "only a paused job can be resumed")
        assert _worker_pauses(job) and not _worker_pauses(job)
        r = alice.get(f"/v1/jobs/{job}").json()
        assert (r["status"], r["pause_requested"], r["attempts"]) == ("paused", False, 1), r

        # paused -> cancelled; then neither pause nor resume.
        r = alice.post(f"/v1/jobs/{job}/cancel").json()
        assert r["status"] == "cancelled" and r["finished_at"] is not None, r
        _refused(alice.post(f"/v1/jobs/{job}/pause"), 409, "job_finished",
                 f"job {job} is cancelled; only a queued or running job can be paused")
        _refused(alice.post(f"/v1/jobs/{job}/resume"), 409, "job_not_paused",
                 f"job {job} is cancelled; only a paused job can be resumed")

        # A running job being cancelled cannot be paused; its worker cancels it.
        _claim(second)
        alice.post(f"/v1/jobs/{second}/cancel")
        _refused(alice.post(f"/v1/jobs/{second}/pause"), 409, "job_cancelling",
                 f"job {second} is being cancelled; it cannot be paused")
        assert not _worker_pauses(second)
        assert alice.get(f"/v1/jobs/{second}").json()["status"] == "running"


def test_a_cancel_overtakes_a_pause_and_a_finish_clears_it(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch) as app:
        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        job = api.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]
        _claim(job)
        api.post(f"/v1/jobs/{job}/pause")
        api.post(f"/v1/jobs/{job}/cancel")  # after the pause, before the worker let go
        assert not _worker_pauses(job)

        from service.db import session_scope
        from service.domain import lifecycle
        from service.domain.lifecycle import JobStatus

        other = api.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]
        _claim(other)
        api.post(f"/v1/jobs/{other}/pause")  # the run ended before it saw the request
        with session_scope() as s:
            assert lifecycle.finish(s, other, JobStatus.SUCCEEDED, model_id="m_1")
        r = api.get(f"/v1/jobs/{other}").json()
        assert (r["status"], r["pause_requested"]) == ("succeeded", False)
        _refused(api.post(f"/v1/jobs/{other}/pause"), 409, "job_finished",
                 f"job {other} is succeeded; only a queued or running job can be paused")


def test_pauses_extend_the_attempt_budget_and_the_reaper_leaves_paused_jobs(
        tmp_path, monkeypatch, database):
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=database) as app:
        from service.db import session_scope
        from service.domain import lifecycle
        from service.domain.tables import JobRow, utcnow

        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        job = api.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]
        for _ in range(4):  # more pauses and resumes than max_attempts (3) allows attempts
            _claim(job)
            api.post(f"/v1/jobs/{job}/pause")
            assert _worker_pauses(job)
            assert api.post(f"/v1/jobs/{job}/resume").json()["status"] == "queued"
        _claim(job)
        assert api.get(f"/v1/jobs/{job}").json()["attempts"] == 5

        # A paused job, even one sent long ago, is neither revived nor re-sent.
        api.post(f"/v1/jobs/{job}/pause")
        assert _worker_pauses(job)
        hour_ago = utcnow() - timedelta(hours=1)
        with session_scope() as s:
            row = s.get_one(JobRow, job)
            row.heartbeat_at = row.enqueued_at = hour_ago
        reap = {"heartbeat_timeout_s": 600, "requeue_after_s": 600}
        with session_scope() as s:
            assert lifecycle.reap(s, **reap) == []
        assert api.get(f"/v1/jobs/{job}").json()["status"] == "paused"

        # A worker that died while pausing its job: paused at the last checkpoint, not
        # re-queued.
        api.post(f"/v1/jobs/{job}/resume")
        _claim(job)
        api.post(f"/v1/jobs/{job}/pause")
        with session_scope() as s:
            s.get_one(JobRow, job).heartbeat_at = hour_ago
        with session_scope() as s:
            assert lifecycle.reap(s, **reap) == []
        r = api.get(f"/v1/jobs/{job}").json()
        assert (r["status"], r["pause_requested"]) == ("paused", False), r
        events = [e["message"] for e in api.get(f"/v1/jobs/{job}/events").json()["data"]]
        assert events.count("paused at step 0") == 6

        metrics = api.get("/metrics").text
        assert 'cloze_jobs{status="paused"} 1.0' in metrics


def test_status_ranks_grow_through_pauses(tmp_path, monkeypatch):
    """The stream sends a status when its rank grows: every move, pauses included, must
    grow it (a reconnecting client's cursor holds the rank it saw)."""
    with make_app(tmp_path, monkeypatch) as app:
        from service.api.stream import status_rank
        from service.db import session_scope
        from service.domain.tables import JobRow

        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        job = api.post("/v1/jobs", json={"dataset_id": ds}).json()["id"]

        def rank() -> int:
            with session_scope() as s:
                return status_rank(s.get_one(JobRow, job))

        seen = [rank()]
        for move in ("pause", "resume", "claim", "pause", "worker", "resume", "claim",
                     "pause", "worker", "cancel"):
            if move == "claim":
                _claim(job)
            elif move == "worker":
                assert _worker_pauses(job)
            else:
                assert api.post(f"/v1/jobs/{job}/{move}").status_code == 200
            if move != "pause" or seen[-1] % 2:  # a pause of a running job is only asked
                seen.append(rank())
        assert seen == sorted(set(seen)), seen
