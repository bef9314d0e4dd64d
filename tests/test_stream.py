"""GET /v1/jobs/{id}/stream, server-sent events, against the whole app served by uvicorn in
this process (a real socket, so a stream really streams and a client really hangs up) on
SQLite and on Postgres. The job is moved as the worker moves it: lifecycle's claim and
finish, and the worker's own DbReporter for log lines, metric points and eval results."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.inprocess import make_app, make_key
from tests.stack import free_port


@dataclass
class Event:
    event: str
    id: str
    data: dict[str, Any]

    @property
    def cursor(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.id.split("."))


@dataclass
class Read:
    events: list[Event]
    comments: list[str]
    seconds: float


def read_stream(http: httpx.Client, job_id: str, last_event_id: str | None = None,
                timeout: float = 30, first: threading.Event | None = None) -> Read:
    """Every event of one connection, until the server ends the stream."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, comments, fields = [], [], {}
    started = time.monotonic()
    with http.stream("GET", f"/v1/jobs/{job_id}/stream", headers=headers,
                     timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line == "":
                if "event" in fields:
                    events.append(Event(fields["event"], fields["id"], json.loads(fields["data"])))
                    if first is not None:
                        first.set()
                fields = {}
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
    return Read(events, comments, time.monotonic() - started)


class Served:
    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{free_port()}"
        config = uvicorn.Config(app, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]),
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def client(self, owner: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {make_key(owner)}"})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api import stream

    monkeypatch.setattr(stream, "POLL_S", 0.05)


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           fast: None) -> Iterator[Served]:
    database = {}
    if request.param == "postgres":
        database["CLOZE_DATABASE_URL"] = request.getfixturevalue("fresh_postgres")
    # One connection in the pool: a stream that kept one would starve every other request.
    with make_app(tmp_path, monkeypatch, CLOZE_DB_POOL_SIZE="1", CLOZE_DB_MAX_OVERFLOW="0",
                  **database) as app:
        served = Served(app)
        yield served
        served.stop()


@pytest.fixture
def alice(served: Served) -> Iterator[httpx.Client]:
    with served.client("alice") as http:
        yield http


def new_job(owner: str = "alice") -> str:
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    job_id = new_id("job")
    with session_scope() as s:
        s.add(lifecycle.new_job(id=job_id, owner=owner, type="pretrain", name="tiny",
                                spec={"name": "tiny"}, dataset_id="ds_none", total_steps=20))
    return job_id


class Worker:
    """Moves a job as a worker does."""

    def __init__(self, job_id: str) -> None:
        from service.storage import get_store
        from workers.db_reporter import DbReporter

        self.job_id = job_id
        self.reporter = DbReporter(job_id, get_store())

    def claim(self) -> None:
        from service.db import session_scope
        from service.domain import lifecycle

        with session_scope() as s:
            assert lifecycle.claim(s, self.job_id, max_attempts=3) == lifecycle.Claim.CLAIMED

    def requeue(self) -> None:
        from service.db import session_scope
        from service.domain import lifecycle

        with session_scope() as s:
            assert lifecycle.requeue(s, self.job_id)

    def train(self, step: int) -> None:
        self.reporter.log({"step": step, "train_loss": 10.0 - step / 10, "learning_rate": 1e-3,
                           "grad_norm": 1.0, "tokens_per_second": 1000.0,
                           "tokens_seen": step * 512})

    def evaluate(self, step: int) -> None:
        self.reporter.eval({"step": step, "eval_loss": 9.0 - step / 10, "perplexity": 100.0,
                            "accuracy": 0.1})

    def finish(self, status: str = "succeeded", **values: Any) -> None:
        from service.db import session_scope
        from service.domain import lifecycle

        with session_scope() as s:
            assert lifecycle.finish(s, self.job_id, lifecycle.JobStatus(status), **values)


def a_whole_run(worker: Worker, pause: float = 0.0,
                watched: threading.Event | None = None) -> None:
    """queued -> running, points at 5, 10 (+ eval), 15, 20 (+ eval), log lines -> succeeded.
    With a pause much longer than a poll after each change, a watcher sees each on its own;
    `watched`: start once the watcher has its first event (the job queued)."""
    if watched is not None:
        assert watched.wait(30)
    worker.claim()
    time.sleep(pause)
    worker.reporter.event("info", "tokenizer trained")
    time.sleep(pause)
    for step in (5, 10, 15, 20):
        worker.train(step)
        time.sleep(pause)
        if step % 10 == 0:
            worker.evaluate(step)
            time.sleep(pause)
    worker.reporter.event("info", "model exported")
    worker.finish()


def summary(events: list[Event]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for e in events:
        if e.event == "status":
            out.append(("status", e.data["status"]))
        elif e.event == "metric":
            out.append(("metric", (e.data["step"], "eval_loss" in e.data)))
        else:
            out.append(("log", e.data["message"]))
    return out


def test_a_live_run_streams_in_order_with_growing_ids_and_ends_after_its_final_status(alice):
    job_id = new_job()
    watched = threading.Event()
    driver = threading.Thread(target=a_whole_run, args=(Worker(job_id), 0.5, watched))
    driver.start()
    read = read_stream(alice, job_id, first=watched)
    driver.join()
    got = summary(read.events)
    # Each change as it happened; a step's eval results re-send its point with them.
    assert got == [
        ("status", "queued"), ("status", "running"), ("log", "tokenizer trained"),
        ("metric", (5, False)), ("metric", (10, False)), ("metric", (10, True)),
        ("metric", (15, False)), ("metric", (20, False)), ("metric", (20, True)),
        ("log", "model exported"), ("status", "succeeded")], got
    cursors = [e.cursor for e in read.events]
    assert cursors == sorted(set(cursors)), cursors
    final = read.events[-1].data
    assert final["id"] == job_id and final["progress"]["step"] == 20
    assert final["eval_loss"] == pytest.approx(7.0)
    point = [e for e in read.events if e.event == "metric"][-1].data
    assert point == {"step": 20, "train_loss": 8.0, "learning_rate": 1e-3, "grad_norm": 1.0,
                     "tokens_per_second": 1000.0, "tokens_seen": 10240, "eval_loss": 7.0,
                     "perplexity": 100.0, "accuracy": 0.1}


def test_resuming_from_any_event_id_gives_exactly_what_followed(alice):
    job_id = new_job()
    a_whole_run(Worker(job_id))  # finished before anyone watched: one status, the final one
    whole = read_stream(alice, job_id).events
    assert [e.event for e in whole].count("status") == 1
    assert summary(whole)[-1] == ("status", "succeeded")
    assert [e.data["step"] for e in whole if e.event == "metric"] == [5, 10, 15, 20]
    for i, event in enumerate(whole):
        rest = read_stream(alice, job_id, last_event_id=event.id).events
        assert [(e.event, e.id, e.data) for e in rest] == [
            (e.event, e.id, e.data) for e in whole[i + 1:]], i


def test_a_stream_that_would_not_end_is_cut_and_resumes_without_repeats(
        alice, monkeypatch):
    """A job that stays queued: the stream ends after MAX_STREAM_S with keep-alive comments
    meanwhile; each reconnect with Last-Event-ID brings only what changed since."""
    from service.api import stream

    monkeypatch.setattr(stream, "MAX_STREAM_S", 1.0)
    monkeypatch.setattr(stream, "KEEPALIVE_S", 0.2)
    job_id = new_job()
    worker = Worker(job_id)
    first = read_stream(alice, job_id)
    assert summary(first.events) == [("status", "queued")]
    assert first.comments and 0.9 < first.seconds < 5
    quiet = read_stream(alice, job_id, last_event_id=first.events[-1].id)
    assert quiet.events == [] and quiet.comments

    worker.claim()
    worker.train(5)
    second = read_stream(alice, job_id, last_event_id=first.events[-1].id).events
    assert summary(second) == [("status", "running"), ("metric", (5, False))]
    worker.evaluate(5)  # merged into step 5's row after it was sent
    worker.requeue()  # the reaper revives it: running -> queued, then a new attempt
    third = read_stream(alice, job_id, last_event_id=second[-1].id).events
    assert summary(third) == [("status", "queued"), ("metric", (5, True))]
    assert third[0].data["attempts"] == 1
    worker.claim()
    worker.finish("failed", error_code="diverged", error_message="the loss became NaN")
    last = read_stream(alice, job_id, last_event_id=third[-1].id)
    # Moves made while nobody watched arrive as where they led: the job as it is now.
    assert summary(last.events) == [("status", "failed")]
    assert last.events[-1].data["error"] == {"code": "diverged",
                                             "message": "the loss became NaN"}
    assert last.seconds < 1.0  # ended at the final status, not by the bound
    cursors = [e.cursor for e in [*first.events, *second, *third, *last.events]]
    assert cursors == sorted(set(cursors))
    # Resuming after the final status: nothing more, at once.
    after = read_stream(alice, job_id, last_event_id=last.events[-1].id)
    assert after.events == [] and after.seconds < 1.0


def test_a_stream_holds_no_database_connection(alice, monkeypatch):
    """The pool has one connection: while a stream is open, other requests still get it."""
    from service.api import stream

    monkeypatch.setattr(stream, "MAX_STREAM_S", 3.0)
    job_id = new_job()
    reads: list[Read] = []
    watcher = threading.Thread(target=lambda: reads.append(read_stream(alice, job_id)))
    watcher.start()
    time.sleep(0.5)
    statuses = [alice.get(f"/v1/jobs/{job_id}").status_code for _ in range(20)]
    watcher.join()
    assert statuses == [200] * 20
    assert summary(reads[0].events) == [("status", "queued")]


def test_a_client_that_hangs_up_ends_the_stream(served, alice, caplog):
    job_id = new_job()
    caplog.set_level("INFO", logger="cloze.stream")
    with alice.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
        for line in r.iter_lines():
            if line.startswith("event: status"):
                break
    deadline = time.monotonic() + 5
    while not any(job_id in m and "ended" in m for m in caplog.messages):
        assert time.monotonic() < deadline, caplog.messages
        time.sleep(0.1)


def test_another_owners_job_is_not_found_and_a_bad_last_event_id_is_refused(served, alice):
    job_id = new_job("alice")
    with served.client("bob") as bob:
        r = bob.get(f"/v1/jobs/{job_id}/stream")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        assert bob.get(f"/v1/jobs/{job_id}").status_code == 404  # exactly as the job itself
    r = alice.get("/v1/jobs/job_nope/stream")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = alice.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "Last-Event-ID"


def test_the_python_client_follows_a_run_across_cut_streams(served, monkeypatch, caplog):
    """With the server cutting every stream after 1.2 s, cloze_client's stream() reconnects
    with Last-Event-ID and sees the run exactly as one long stream would."""
    from cloze_client import Client
    from service.api import stream

    monkeypatch.setattr(stream, "MAX_STREAM_S", 1.2)
    caplog.set_level("INFO", logger="cloze.stream")
    job_id = new_job()
    watched = threading.Event()
    driver = threading.Thread(target=a_whole_run, args=(Worker(job_id), 0.5, watched))
    driver.start()
    events = []
    with Client(served.url, api_key=make_key("alice")) as client:
        for e in client.stream(job_id):
            events.append(Event(e.event, e.id or "", e.data))
            watched.set()
    driver.join()
    assert summary(events) == [
        ("status", "queued"), ("status", "running"), ("log", "tokenizer trained"),
        ("metric", (5, False)), ("metric", (10, False)), ("metric", (10, True)),
        ("metric", (15, False)), ("metric", (20, False)), ("metric", (20, True)),
        ("log", "model exported"), ("status", "succeeded")]
    cursors = [e.cursor for e in events]
    assert cursors == sorted(set(cursors))
    assert sum(f"stream of {job_id} ended" in m for m in caplog.messages) >= 3  # 2+ cuts
