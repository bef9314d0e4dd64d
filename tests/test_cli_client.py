"""`cloze datasets|jobs|models` end to end: the commands (typer's CliRunner, and a real
subprocess where one must run beside the test) against a live embedded stack with a real
Celery worker, as a user types them."""

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from cloze_client import Client, ClozeError
from service.cli import app
from tests.stack import ROOT, Stack, corpus_slice
from tests.test_e2e_pretrain import TINY_JOB

runner = CliRunner()


def cloze(*args: str, url: str | None = None) -> Result:
    return runner.invoke(app, [*args, *(["--url", url] if url else [])])


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def one_line_error(result: Result, *fragments: str) -> None:
    """Exit 1, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def tiny_spec(max_steps: int = 40) -> dict:
    return {**TINY_JOB, "name": "cli-tiny", "eval_every": 10, "checkpoint_every": max_steps,
            "hyperparameters": {**TINY_JOB["hyperparameters"], "max_steps": max_steps}}


def test_a_server_that_is_down_is_one_line():
    one_line_error(cloze("jobs", "list", url="http://127.0.0.1:9"),
                   "cannot reach the Cloze API at http://127.0.0.1:9")


def test_bad_spec_files_are_one_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "pretrain",')
    one_line_error(cloze("jobs", "submit", str(broken)), "broken.json", "not valid JSON")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    one_line_error(cloze("jobs", "submit", str(listed)), "list.yaml", "mapping")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("type: [pretrain\n")
    one_line_error(cloze("jobs", "submit", str(bad_yaml)), "bad.yaml", "not valid YAML")
    one_line_error(cloze("jobs", "submit", str(tmp_path / "missing.json")), "no such file")
    one_line_error(cloze("datasets", "upload", str(tmp_path / "missing.txt")),
                   "no such file")


def test_api_errors_are_one_line(embedded_stack: Stack, tmp_path):
    url = embedded_stack.url
    one_line_error(cloze("jobs", "show", "job_nope", url=url), "404", "job_nope")
    one_line_error(cloze("jobs", "watch", "job_nope", url=url), "404", "job_nope")
    one_line_error(cloze("models", "fill-mask", "m_nope", "a [MASK]", url=url), "404")
    one_line_error(cloze("datasets", "delete", "ds_nope", url=url), "404")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**tiny_spec(), "dataset_id": "ds_nope"}))
    one_line_error(cloze("jobs", "submit", str(spec), url=url), "422", "dataset_id")


@pytest.mark.slow
def test_upload_submit_watch_metrics_and_fill_mask(embedded_stack: Stack, data_dir: Path,
                                                   tmp_path: Path):
    stack, url = embedded_stack, embedded_stack.url
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(corpus_slice(data_dir / "en-valid.txt.gz", 100_000))

    # upload: the id on stdout, the dataset as the API has it
    dataset_id = ok(cloze("datasets", "upload", str(corpus), "--name", "cli", url=url)).strip()
    assert dataset_id.startswith("ds_")
    shown = json.loads(ok(cloze("datasets", "show", dataset_id, url=url)))
    assert shown["bytes"] == corpus.stat().st_size and shown["name"] == "cli"
    assert dataset_id in ok(cloze("datasets", "list", url=url))

    # submit a YAML spec, naming the dataset on the command line
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    # a dry run first: what the job would do, and no job made
    before = stack.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    estimate = json.loads(ok(cloze("jobs", "submit", str(spec), "--dataset", dataset_id,
                                   "--dry-run", url=url)))
    assert estimate["dry_run"] is True and estimate["steps"] == 40
    assert stack.client.get("/v1/jobs", params={"limit": 100}).json()["data"] == before
    job_id = ok(cloze("jobs", "submit", str(spec), "--dataset", dataset_id, url=url)).strip()
    assert job_id.startswith("job_")
    assert job_id in ok(cloze("jobs", "list", url=url))

    # watch it to the end: exit 0, and the outcome as the API reports it
    watched = cloze("jobs", "watch", job_id, url=url)
    job = stack.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", (job, stack.logs())
    line = ok(watched).strip().splitlines()[-1]
    assert line.startswith(f"{job_id} succeeded at step 40/40")
    assert job["model_id"] in line and f"{job['eval_loss']:.4f}" in line

    # the curve as CSV: every point the API has, the same numbers
    rows = list(csv.DictReader(io.StringIO(ok(cloze("jobs", "metrics", job_id, "--csv",
                                                    url=url)))))
    api = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [int(r["step"]) for r in rows] == [p["step"] for p in api] and rows
    assert {"train_loss", "eval_loss", "learning_rate"} <= set(rows[0])
    for row, point in zip(rows, api, strict=True):
        for key, value in point.items():
            assert float(row[key]) == pytest.approx(value), (key, row, point)
        assert all(row[k] == "" for k in row if k not in point)

    # fill-mask: the API's predictions, as a table
    model_id = job["model_id"]
    text = "the [MASK] of the lord."
    table = ok(cloze("models", "fill-mask", model_id, text, url=url))
    answer = stack.client.post(f"/v1/models/{model_id}/fill-mask",
                               json={"inputs": text}).json()
    lines = table.splitlines()
    assert lines[0].split() == ["score", "token", "sequence"] and len(lines) == 1 + len(answer)
    for row, prediction in zip(lines[1:], answer, strict=True):
        assert row.split()[:2] == [f"{prediction['score']:.4f}", prediction["token_str"]]

    # the export, extracted where asked
    where = Path(ok(cloze("models", "download", model_id, str(tmp_path / "models"),
                          url=url)).strip())
    assert where == tmp_path / "models" / model_id
    assert {"config.json", "model.safetensors"} <= {p.name for p in where.iterdir()}
    assert model_id in ok(cloze("models", "list", url=url))


@pytest.mark.slow
def test_watching_a_job_that_is_cancelled_exits_1_with_the_reason(embedded_stack: Stack,
                                                                  data_dir: Path):
    """`jobs watch` in its own process follows a running job; `jobs cancel` stops it."""
    stack, url = embedded_stack, embedded_stack.url
    ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 100_000)).json()
    job = stack.client.post("/v1/jobs", json={**tiny_spec(100_000), "dataset_id": ds["id"],
                                              "checkpoint_every": 100_000}).json()
    watch = subprocess.Popen([sys.executable, "-m", "service.cli", "jobs", "watch", job["id"],
                              "--url", url], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while stack.client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 10:
            assert time.monotonic() < deadline and watch.poll() is None, stack.logs()
            time.sleep(0.5)
        ok(cloze("jobs", "cancel", job["id"], url=url))
        out, err = watch.communicate(timeout=120)
    finally:
        watch.kill()
    assert watch.returncode == 1, (out, err)
    assert out.strip().splitlines()[-1].startswith(f"{job['id']} was cancelled at step ")
    assert "Traceback" not in err


def test_the_url_and_key_come_from_the_environment_or_the_flags(embedded_stack: Stack):
    down = "http://127.0.0.1:9"
    result = runner.invoke(app, ["jobs", "list"], env={"CLOZE_URL": down})
    one_line_error(result, f"cannot reach the Cloze API at {down}")
    result = runner.invoke(app, ["jobs", "list", "--url", embedded_stack.url],
                           env={"CLOZE_URL": down})
    assert result.exit_code == 0, result.stderr
    # A key is sent: a Cloze-shaped key that is not valid is refused even on loopback.
    result = runner.invoke(app, ["jobs", "list", "--url", embedded_stack.url],
                           env={"CLOZE_API_KEY": "cloze_sk_not-a-key"})
    one_line_error(result, "401", "not valid")
    result = runner.invoke(app, ["jobs", "list", "--url", embedded_stack.url,
                                 "--api-key", "cloze_sk_not-a-key"])
    one_line_error(result, "401", "not valid")


def test_a_yaml_spec_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    spec = tmp_path / "job.yaml"
    spec.write_text("type: pretrain\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now fails
    one_line_error(cloze("jobs", "submit", str(spec)), "job.yaml", "PyYAML",
                   "pip install pyyaml")


def test_the_client_imports_nothing_of_the_service():
    """cloze_client speaks HTTP only: installed on a laptop it needs no torch, no database."""
    code = ("import sys, cloze_client, cloze_client.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'service', 'workers', 'jobspec', 'torch', 'sqlalchemy', 'celery'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the Python client's stream, over a transport that misbehaves on purpose ----------


def _frame(event: str, event_id: str, data: dict) -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(data)}\n\n".encode()


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], then: Exception | None = None) -> None:
        self.chunks, self.then = chunks, then

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.then is not None:
            raise self.then


def test_the_stream_resumes_after_a_drop_and_a_cut_without_repeats():
    queued = _frame("status", "0.0.0.1", {"id": "job_x", "status": "queued"})
    point = _frame("metric", "7.5.0.1", {"step": 5, "train_loss": 9.5})
    line = _frame("log", "7.5.3.1", {"id": 3, "level": "info", "message": "hello"})
    done = _frame("status", "7.5.3.4", {"id": "job_x", "status": "succeeded"})
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        sse = {"content-type": "text/event-stream"}
        if len(seen) == 1:  # the connection drops mid-stream
            return httpx.Response(200, headers=sse, stream=_Chunks(
                [b"retry: 1000\n\n", queued, point[:20]], httpx.ReadError("connection reset")))
        if len(seen) == 2:  # the server ends a long stream (its time bound)
            return httpx.Response(200, headers=sse, stream=_Chunks([point, b": keep-alive\n\n",
                                                                    line]))
        return httpx.Response(200, headers=sse, stream=_Chunks([done]))

    with Client("http://cloze.test", transport=httpx.MockTransport(answer)) as client:
        got = [(e.event, e.id) for e in client.stream("job_x")]
    assert got == [("status", "0.0.0.1"), ("metric", "7.5.0.1"), ("log", "7.5.3.1"),
                   ("status", "7.5.3.4")]
    assert seen == [None, "0.0.0.1", "7.5.3.1"]


def test_the_client_raises_one_error_class():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return httpx.Response(404, json={"error": {
                "code": "not_found", "message": "no job with id 'job_y'", "param": None}})
        if request.url.path == "/v1/jobs":
            return httpx.Response(422, json={"error": {
                "code": "invalid_request", "message": "dataset_id: no dataset",
                "param": "dataset_id"}})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://cloze.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ClozeError) as caught:
            list(client.stream("job_y"))
        assert (caught.value.status, caught.value.code) == (404, "not_found")
        with pytest.raises(ClozeError) as caught:
            client.submit_job({"type": "pretrain"})
        assert (caught.value.status, caught.value.code, caught.value.param) == (
            422, "invalid_request", "dataset_id")
        with pytest.raises(ClozeError) as caught:
            client.list_models()
        assert (caught.value.status, caught.value.code) == (502, "http_error")
        assert "bad gateway" in caught.value.message

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with Client("http://cloze.test", transport=httpx.MockTransport(down)) as client:
        client.STREAM_RETRIES = 1
        with pytest.raises(ClozeError) as caught:
            list(client.stream("job_z"))
        assert caught.value.status is None and caught.value.code == "connection_error"
        assert "http://cloze.test" in str(caught.value)


def test_an_upload_streams_the_file_and_reports_progress(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_bytes(b"one line of text\n" * 50_000)  # 850 kB: many chunks
    calls: list[tuple[int, int | None]] = []
    received = {}

    def answer(request: httpx.Request) -> httpx.Response:
        received["body"] = request.read()
        return httpx.Response(201, json={"id": "ds_x", "object": "dataset"})

    with Client("http://cloze.test", transport=httpx.MockTransport(answer)) as client:
        dataset = client.upload_dataset(corpus, name="big",
                                        progress=lambda done, total: calls.append((done, total)))
    assert dataset["id"] == "ds_x"
    assert corpus.read_bytes() in received["body"]
    assert b'name="name"\r\n\r\nbig\r\n' in received["body"]
    size = corpus.stat().st_size
    assert len(calls) > 5 and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_the_watch_view_shows_progress_eta_and_the_curve():
    from rich.console import Console

    from cloze_client.sse import StreamEvent
    from cloze_client.watch import WatchState, sparkline

    assert sparkline([3.0, 2.0, 1.0, 1.0]) == "█▅▁▁" and sparkline([]) == ""
    assert sparkline([2.0, 2.0]) == "▁▁"
    job = {"id": "job_w", "name": "ft", "status": "running", "model_id": None, "error": None,
           "train_loss": None, "eval_loss": None, "cancel_requested": False,
           "progress": {"step": 0, "total_steps": 0, "tokens_seen": 0,
                        "tokens_per_second": None, "eta_seconds": None}}
    state = WatchState()
    state.apply(StreamEvent("status", "a", job))
    for step in (10, 20):
        state.apply(StreamEvent("metric", "b", {"step": step, "train_loss": 4.0 - step / 10,
                                                "tokens_per_second": 1000.0,
                                                "tokens_seen": step * 100}))
    state.apply(StreamEvent("metric", "c", {"step": 20, "eval_loss": 2.5}))
    assert state.needs_total() and state.eta_seconds() is None  # no step count yet
    state.refresh({**job, "status": "succeeded",
                   "progress": {**job["progress"], "step": 20, "total_steps": 120}})
    assert state.job["status"] == "running" and not state.needs_total()
    assert state.eta_seconds() == pytest.approx((120 - 20) * 100 / 1000)  # 10 s
    console = Console(width=100, record=True)
    console.print(state.render())
    text = console.export_text()
    for shown in ("job_w", "running", "20/120", "train 2.0000", "eval 2.5000",
                  "1,000 tokens/s", "ETA 10s", "█▁"):
        assert shown in text, (shown, text)
    state.apply(StreamEvent("status", "d", {**job, "status": "failed", "error": {
        "code": "diverged", "message": "the loss became NaN"}}))
    assert state.outcome() == (1, "job_w failed at step 0/0: diverged: the loss became NaN")
