"""GET /metrics in the Prometheus text format (read back with prometheus_client's own
parser), X-Request-ID, and JSON log lines carrying request_id and job_id. In-process on
SQLite (tests/inprocess.py); one real `cloze api` for uvicorn's own log handlers."""

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.inference_helpers import api_process
from tests.inprocess import client, make_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: Any) -> Samples:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0") as built:
        yield built


def add_job(status: str, **fields: Any) -> str:
    from service.db import session_scope
    from service.domain.ids import new_id
    from service.domain.tables import JobRow

    job_id = new_id("job")
    with session_scope() as s:
        s.add(JobRow(id=job_id, owner="local", type="pretrain", name=job_id, status=status,
                     spec={}, dataset_id="ds_x", **fields))
    return job_id


def test_request_counters_grow_by_route_template_not_path(app: FastAPI):
    api = client(app)
    before = scrape(api)
    for job_id in ("job_aaaa", "job_bbbb"):
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
    assert api.get("/v1/jobs?limit=5").status_code == 200
    assert api.get("/no/such/page/job_cccc").status_code == 404
    after = scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    template = "/v1/jobs/{job_id}"
    assert grew("cloze_http_requests_total", method="GET", route=template, status="404") == 2
    assert grew("cloze_http_requests_total", method="GET", route="/v1/jobs", status="200") == 1
    assert grew("cloze_http_requests_total", method="GET", route="unmatched",
                status="404") == 1
    # The latency histogram counts the same requests, under the same route labels.
    assert grew("cloze_http_request_duration_seconds_count", method="GET", route=template) == 2
    assert grew("cloze_http_request_duration_seconds_bucket", method="GET", route=template,
                le="+Inf") == 2
    # No raw path, hence no id, in any label.
    labels = " ".join(v for (_, ls) in after for _, v in ls)
    assert "job_aaaa" not in labels and "job_cccc" not in labels
    # A made-up method is "other", not a new label value per method.
    api.request("BREW", "/v1/jobs")
    assert value(scrape(api), "cloze_http_requests_total", method="other", route="/v1/jobs",
                 status="405") == 1


def test_job_gauges_match_the_jobs_in_the_database(app: FastAPI):
    from sqlalchemy import func, select

    from service.db import session_scope
    from service.domain.tables import JobRow, utcnow

    api = client(app)
    assert value(scrape(api), "cloze_queue_depth") == 0
    old = utcnow() - timedelta(minutes=30)
    for _ in range(3):
        add_job("queued")
    add_job("queued", created_at=old)
    add_job("succeeded")
    add_job("failed")
    fast = add_job("running", step=120, tokens_per_second=5000.0, training_gauges={
        "step_seconds": 0.25, "mfu": 0.41, "device_memory_bytes": 3 << 30})
    slow = add_job("running", step=7, tokens_per_second=90.0, training_gauges={
        "step_seconds": 1.5, "device_memory_bytes": 1 << 20})  # a CPU: no MFU
    got = scrape(api)

    with session_scope() as s:
        in_db = dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert value(got, "cloze_jobs", status=status) == in_db.get(status, 0), status
    assert value(got, "cloze_queue_depth") == in_db["queued"] == 4
    assert 29 * 60 < value(got, "cloze_queue_oldest_job_age_seconds") < 40 * 60
    assert value(got, "cloze_database_up") == 1
    assert value(got, "cloze_training_step", job_id=fast) == 120
    assert value(got, "cloze_training_tokens_per_second", job_id=fast) == 5000
    assert value(got, "cloze_training_step_seconds", job_id=slow) == 1.5
    assert value(got, "cloze_training_device_memory_bytes", job_id=fast) == 3 << 30
    assert named(got, "cloze_training_mfu") == {(("job_id", fast),): 0.41}  # omitted, not 0
    # Only running jobs have training series.
    assert {dict(ls)["job_id"] for ls in named(got, "cloze_training_step")} == {fast, slow}
    # Live workers come from the heartbeats /health reads (none here).
    assert value(got, "cloze_workers_alive") == 0 and ("cloze_workers_alive", ()) in got


def test_a_worker_s_log_points_reach_the_training_gauges(app: FastAPI):
    from service.storage import get_store
    from workers.db_reporter import DbReporter

    job_id = add_job("running")
    reporter = DbReporter(job_id, get_store())
    point = {"step": 10, "total_steps": 100, "train_loss": 5.0, "learning_rate": 1e-3,
             "grad_norm": 1.0, "tokens_per_second": 4096.0, "tokens_seen": 10 * 2048,
             "mfu": 0.3}
    reporter.log(point)
    reporter.log({**point, "step": 20, "tokens_per_second": 8192.0, "tokens_seen": 20 * 2048})
    got = scrape(client(app))
    assert value(got, "cloze_training_step", job_id=job_id) == 20
    assert value(got, "cloze_training_tokens_per_second", job_id=job_id) == 8192
    # 2,048 tokens a step at 8,192 tokens/s.
    assert value(got, "cloze_training_step_seconds", job_id=job_id) == pytest.approx(0.25)
    assert value(got, "cloze_training_mfu", job_id=job_id) == pytest.approx(0.3)
    assert value(got, "cloze_training_device_memory_bytes", job_id=job_id) > 10 << 20
    # The curve is unchanged: the gauges live on the job row, not in the metric points.
    points = client(app).get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [p["step"] for p in points] == [10, 20]
    assert not {"step_seconds", "device_memory_bytes"} & set(points[-1])


def test_a_database_that_is_down_leaves_the_job_metrics_out(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    # Nothing listens on port 1: the connection is refused at once.
    with make_app(tmp_path, monkeypatch) as app:
        monkeypatch.setenv("CLOZE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
        from tests.inprocess import _clear_caches

        _clear_caches()
        got = scrape(client(app))
    assert value(got, "cloze_database_up") == 0
    assert not named(got, "cloze_jobs") and not named(got, "cloze_queue_depth")
    assert named(got, "cloze_http_requests_total")  # the rest of the scrape still answers


def test_the_request_id_is_accepted_or_made_and_echoed(app: FastAPI):
    api = client(app)
    r = api.get("/v1/jobs", headers={"X-Request-ID": "abc-123.trace"})
    assert r.headers["x-request-id"] == "abc-123.trace"
    made = {api.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3 and all(len(m) == 32 for m in made)
    # An id too long or with odd characters (it is logged and echoed) is replaced.
    for bad in ("x" * 200, "a b", "new\u00e9line"):
        echoed = api.get("/v1/jobs", headers={"X-Request-ID": bad.encode()}
                         ).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32
    # An error answer carries it too.
    r = api.get("/v1/jobs/job_nope", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Everything logged, as the JSON formatter writes it."""
    from service.logs import JsonFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_json_request_lines_carry_the_request_id_and_the_job_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_lines: io.StringIO):
    with make_app(tmp_path, monkeypatch, CLOZE_LOG_FORMAT="json") as app:
        api = client(app)
        api.get("/v1/jobs/job_x1", headers={"X-Request-ID": "req-42"})
        api.get("/v1/jobs?limit=3", headers={"X-Request-ID": "req-43"})
    lines = parsed(json_lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "cloze.access"}
    assert access["req-42"]["job_id"] == "job_x1"
    assert (access["req-42"]["route"], access["req-42"]["status"]) == ("/v1/jobs/{job_id}", 404)
    assert access["req-43"]["path"] == "/v1/jobs" and "job_id" not in access["req-43"]
    assert access["req-43"]["duration_ms"] >= 0
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_an_unhandled_error_is_counted_answered_and_logged_with_its_request_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_lines: io.StringIO):
    with make_app(tmp_path, monkeypatch, CLOZE_LOG_FORMAT="json") as app:
        def boom(thing: str) -> None:
            raise RuntimeError(f"broken {thing}")

        app.add_api_route("/boom/{thing}", boom)
        api = client(app)
        before = scrape(api)
        r = api.get("/boom/x1", headers={"X-Request-ID": "req-500"})
        after = scrape(api)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "req-500"
    labels = {"method": "GET", "route": "/boom/{thing}", "status": "500"}
    assert value(after, "cloze_http_requests_total", **labels) - \
        value(before, "cloze_http_requests_total", **labels) == 1
    errors = [line for line in parsed(json_lines) if line["message"] == "unhandled error"]
    assert [e["request_id"] for e in errors] == ["req-500"]
    assert "RuntimeError: broken x1" in errors[0]["exception"]


def test_the_console_format_stays_the_default(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              json_lines: io.StringIO):
    with make_app(tmp_path, monkeypatch) as app:
        client(app).get("/v1/jobs", headers={"X-Request-ID": "req-44"})
    # No structured line per request (uvicorn's access line stays, outside this process).
    assert not [line for line in parsed(json_lines) if line["logger"] == "cloze.access"]


def test_a_worker_s_lines_carry_the_job_id(app: FastAPI, json_lines: io.StringIO):
    from workers.runner import run_job

    job_id = add_job("cancelled")  # not claimable: the attempt logs why and returns
    run_job(job_id)
    lines = [line for line in parsed(json_lines) if line["logger"] == "cloze.worker"]
    assert lines and all(line["job_id"] == job_id for line in lines), lines
    assert "not claimable" in lines[0]["message"]


def test_cloze_api_writes_json_lines_under_cloze_log_format(tmp_path: Path):
    """A real `cloze api`: uvicorn's own handlers write JSON too, and its plain access line
    gives way to ours."""
    with api_process(tmp_path / "home", {"CLOZE_LOG_FORMAT": "json"}) as (url, proc, _):
        r = httpx.get(f"{url}/v1/jobs/job_zz9", headers={"X-Request-ID": "live-1"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "live-1"
        assert "cloze_http_requests_total" in httpx.get(f"{url}/metrics").text
        proc.terminate()
        proc.wait(timeout=30)
    raw = [line for line in (tmp_path / "home" / "api.log").read_text().splitlines()
           if line.strip()]
    lines = [json.loads(line) for line in raw]  # every line: a JSON object
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    ours = [line for line in lines if line.get("request_id") == "live-1"]
    assert [(line["logger"], line["job_id"], line["status"]) for line in ours] == \
        [("cloze.access", "job_zz9", 404)]
