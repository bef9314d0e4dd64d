"""`cloze datasets|jobs|models` end to end: the commands (typer's CliRunner, and a real
subprocess where one must run beside the test) against a live embedded stack with a real
Celery worker, as a user types them."""

import csv
import io
import json
import subprocess
import sys
import tarfile
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
from tests.test_embeddings import base_bert
from tests.test_import_and_serving import tokenizer_dir  # noqa: F401 (a fixture)

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
    one_line_error(cloze("models", "embed", "m_nope", "a text", url=url), "404")
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
    shown = json.loads(ok(cloze("datasets", "show", dataset_id, "--json", url=url)))
    assert shown["bytes"] == corpus.stat().st_size and shown["name"] == "cli"
    assert shown["preview"]["records"], shown["preview"]  # its first documents
    assert dataset_id in ok(cloze("datasets", "show", dataset_id, url=url))  # for a person
    assert dataset_id in ok(cloze("datasets", "list", url=url))

    # submit a YAML spec, naming the dataset on the command line
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    # a dry run first: what the job would do, and no job made
    before = stack.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    estimate = json.loads(ok(cloze("jobs", "submit", str(spec), "--dataset", dataset_id,
                                   "--dry-run", "--json", url=url)))
    assert estimate["dry_run"] is True and estimate["steps"] == 40
    said = ok(cloze("jobs", "submit", str(spec), "--dataset", dataset_id, "--dry-run",
                    url=url)).splitlines()
    assert said[0] == "cli-tiny: pretrain (mlm), 40 steps" + said[0].split("40 steps")[1]
    assert said[3].split()[:2] == ["time", "about"]
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


def test_import_a_hub_directory_then_embed_and_compare(embedded_stack: Stack,
                                                       tokenizer_dir: Path,  # noqa: F811
                                                       tmp_path: Path):
    """`models import` packs a base BERT directory as the Hub ships it (a pickled copy and
    huggingface-cli's .cache beside it) and prints its id; `embed` prints the API's vectors,
    `similarity` its scores."""
    stack, url = embedded_stack, embedded_stack.url
    directory = base_bert(tmp_path, tokenizer_dir, "tiny-bert")
    (directory / "pytorch_model.bin").write_bytes(b"a pickle the Hub ships beside it")
    (directory / ".cache" / "huggingface").mkdir(parents=True)
    (directory / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("x")
    imported = cloze("models", "import", str(directory), url=url)
    model_id = ok(imported).strip()
    assert model_id.startswith("m_")
    summary = imported.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{model_id} 'tiny-bert': feature-extraction, bert, pooling mean")
    assert summary.endswith("skipped 1 file: pytorch_model.bin"), summary

    texts = ["the quick brown fox", "paris france"]
    want = stack.client.post(f"/v1/models/{model_id}/feature-extraction",
                             json={"inputs": texts}).json()
    lines = ok(cloze("models", "embed", model_id, *texts, url=url)).splitlines()
    got = [json.loads(line) for line in lines]
    assert len(got) == 2 and len(got[0]) == 32
    assert max(abs(a - b) for g, w in zip(got, want, strict=True)
               for a, b in zip(g, w, strict=True)) < 1e-5
    normalized = json.loads(ok(cloze("models", "embed", model_id, texts[0], "--normalize",
                                     "--json", url=url)))
    assert len(normalized) == 1 and sum(x * x for x in normalized[0]) == pytest.approx(1.0)

    scores = stack.client.post(f"/v1/models/{model_id}/sentence-similarity", json={
        "inputs": {"source_sentence": "the dog", "sentences": texts}}).json()
    table = ok(cloze("models", "similarity", model_id, "the dog", *texts, url=url))
    rows = table.splitlines()
    assert rows[0].split() == ["score", "sentence"] and len(rows) == 3
    for row, score, text in zip(rows[1:], scores, texts, strict=True):
        assert row.split(None, 1) == [f"{score:.4f}", text]


def test_the_client_imports_an_archive_and_embeds(embedded_stack: Stack,
                                                  tokenizer_dir: Path,  # noqa: F811
                                                  tmp_path: Path):
    directory = base_bert(tmp_path, tokenizer_dir, "archived")
    archive = tmp_path / "archived.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname="archived")
    with Client(embedded_stack.url) as client:
        model = client.import_model(archive, name="from-archive")
        assert (model["name"], model["task"]) == ("from-archive", "feature-extraction")
        one = client.feature_extraction(model["id"], "paris", normalize=True)
        assert len(one) == 1 and sum(x * x for x in one[0]) == pytest.approx(1.0)
        scores = client.sentence_similarity(model["id"], "paris", ["paris", "the fox"])
        assert len(scores) == 2 and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_import_errors_are_one_line(embedded_stack: Stack, tokenizer_dir: Path,  # noqa: F811
                                    tmp_path: Path):
    url = embedded_stack.url
    one_line_error(cloze("models", "import", str(tmp_path / "missing"), url=url),
                   "missing", "no such file or directory")
    (tmp_path / "notes.txt").write_text("not a model")
    one_line_error(cloze("models", "import", str(tmp_path / "notes.txt"), url=url),
                   "notes.txt", "not a model directory or a .tar.gz, .tar or .zip archive")
    (tmp_path / "empty").mkdir()
    one_line_error(cloze("models", "import", str(tmp_path / "empty"), url=url),
                   "empty", "no config.json")
    pickled = base_bert(tmp_path, tokenizer_dir, "pickled")  # its only weights pickled
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    one_line_error(cloze("models", "import", str(pickled), url=url),
                   "422", "only safetensors weights are accepted")


def test_a_directory_is_packed_on_disk_as_the_server_keeps_it(tmp_path: Path):
    """Packed without what the server skips (jobspec.model_dir's list) and without
    hidden folders, links followed, the same bytes each time (an Idempotency-Key retry
    sends what the first try did); the files left out join details.skipped_files."""
    from cloze_client.client import MODEL_FILE_SUFFIXES, pack_model_dir
    from jobspec.model_dir import MODEL_FILE_SUFFIXES as KEPT

    assert MODEL_FILE_SUFFIXES == KEPT
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes(b"safetensors bytes" * 1000)
    model = tmp_path / "snapshot"
    (model / "onnx").mkdir(parents=True)
    (model / ".git").mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").symlink_to(blobs / "abc123")  # a Hub cache snapshot's
    (model / "pytorch_model.bin").write_bytes(b"pickle")
    (model / "onnx" / "model.onnx").write_bytes(b"onnx")
    (model / ".git" / "HEAD").write_text("ref")
    first, second = tmp_path / "1.tar.gz", tmp_path / "2.tar.gz"
    calls: list[tuple[int, int | None]] = []
    assert pack_model_dir(model, first, progress=lambda done, total: calls.append(
        (done, total))) == ["onnx/model.onnx", "pytorch_model.bin"]
    time.sleep(1.1)  # a gzip header's timestamp would now differ
    pack_model_dir(model, second)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["snapshot/config.json",
                                             "snapshot/model.safetensors"]
        assert all(m.isfile() for m in members)
        weights = tar.extractfile(members[1])
        assert weights is not None and weights.read() == (blobs / "abc123").read_bytes()
    assert calls[-1] == (17_002, 17_002)

    sent = {}

    def answer(request: httpx.Request) -> httpx.Response:
        sent["key"] = request.headers.get("idempotency-key")
        sent["body"] = request.read()
        return httpx.Response(201, json={"id": "m_x", "object": "model", "details": {
            "skipped_files": ["README.onnx"]}})

    with Client("http://cloze.test", transport=httpx.MockTransport(answer)) as client:
        got = client.import_model(model, idempotency_key="k1")
    assert sent["key"] == "k1" and first.read_bytes() in sent["body"]
    assert got["details"]["skipped_files"] == ["README.onnx", "onnx/model.onnx",
                                               "pytorch_model.bin"]


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


PRETRAIN_ESTIMATE = {
    "object": "job_estimate", "dry_run": True, "type": "pretrain", "name": "bert-mini-300",
    "spec": {"type": "pretrain", "objective": "mlm"}, "steps": 300, "epochs": 2.0469,
    "parameters": 4410112, "memory_bytes": 355_800_000,
    "data": {"source": "tokenized", "documents": 49, "tokens": 302926, "vocab_size": 4096,
             "train_blocks": 2345, "validation_blocks": 59, "train_examples": None,
             "validation_examples": None, "labels": None},
    "time": {"seconds": 1378.1, "tokens": 614400, "tokens_per_second": 445.8,
             "source": "scaled", "worker_kind": "cpu AMD EPYC x2 threads"}}


def test_a_dry_run_reads_as_sentences_not_json():
    """`jobs submit --dry-run` says what would run, on what, for how long and where the
    time comes from (gh and kubectl print for people; --json is there for scripts)."""
    from cloze_client.cli import estimate_lines

    lines = estimate_lines(PRETRAIN_ESTIMATE)  # type: ignore[arg-type]
    assert lines[0] == "bert-mini-300: pretrain (mlm), 300 steps (2.05 epochs)"
    assert "4,410,112 parameters, memory up to 355.8 MB" in lines[1]
    assert "302,926 tokens, 2,345 training blocks, 59 validation blocks (tokenized)" in lines[2]
    assert lines[3].split() == ["time", "about", "23", "min", "(614,400", "tokens", "at", "446",
                                "tokens/s,", "scaled", "from", "another", "model", "size",
                                "measured", "on", "cpu", "AMD", "EPYC", "x2", "threads)"]

    finetune = {**PRETRAIN_ESTIMATE, "type": "finetune", "name": "spam",
                "spec": {"task": "text_classification"}, "steps": 88, "epochs": 2.0114,
                "memory_bytes": None, "parameters": 1003650,
                "data": {**PRETRAIN_ESTIMATE["data"], "source": "records", "documents": 1200,
                         "tokens": None, "vocab_size": None, "train_blocks": None,
                         "validation_blocks": None, "train_examples": 700,
                         "validation_examples": 180, "labels": 2},
                "time": {"seconds": 84.9, "tokens": 180224, "tokens_per_second": 2124.0,
                         "source": "default", "worker_kind": None}}
    lines = estimate_lines(finetune)  # type: ignore[arg-type]
    assert lines[0] == "spam: finetune (text_classification), 88 steps (2.01 epochs)"
    assert lines[1].split() == ["model", "1,003,650", "parameters"]
    assert "700 training examples, 180 validation examples, 2 labels (records)" in lines[2]
    assert "about 85 s" in lines[3] and "nothing measured yet" in lines[3]
    unreadable = {**finetune, "time": None, "epochs": None}
    assert estimate_lines(unreadable)[3].split()[:2] == ["time", "-"]  # type: ignore[arg-type]


def test_tables_keep_ids_numbers_and_headers_whole(capsys, monkeypatch):
    """Piped: one row a line, nothing cut, no trailing blanks. In a terminal too narrow for
    the table, only the free-text column wraps; ids, numbers and headers stay whole (the
    lines then run past the edge rather than lose a column)."""
    from rich.console import Console
    from rich.text import Text

    from cloze_client import cli

    job_id, model_id = "job_7090a7108e49faf656de45b5", "m_c2350382cda2ea7a9854af54"
    columns = ["id", "name", "status", "train loss", "tokens/s", "model"]
    rows = [[job_id, "a rather long run name that wraps", "succeeded", "6.2982", "1,522",
             model_id]]
    cli._print_table(columns, rows, wrap=("name",))
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("  ")[0] == "id" and "train loss" in out[0] and len(out) == 2
    assert out[1].startswith(job_id) and out[1].endswith(model_id)
    assert "a rather long run name that wraps" in out[1]

    narrow = Console(width=40, force_terminal=True)
    monkeypatch.setattr(cli, "_out", lambda: narrow)
    cli._print_table(columns, rows, wrap=("name",))
    text = capsys.readouterr().out
    plain = [line.rstrip() for line in Text.from_ansi(text).plain.splitlines()]
    assert "train loss" in plain[0] and "tokens/s" in plain[0]
    assert plain[1].startswith(job_id) and model_id in plain[1] and "6.2982" in plain[1]
    assert len(plain) > 2  # the name wrapped onto more lines


def test_the_watch_view_shows_the_whole_curve_scores_and_time_taken():
    """A long run's sparkline is the whole curve (its start too, not the last 60 points);
    a classifier's accuracy and f1 show beside the losses; running, the time elapsed;
    finished, the time it took (started to finished)."""
    from datetime import UTC, datetime

    from rich.console import Console

    from cloze_client.sse import StreamEvent
    from cloze_client.watch import WatchState, elapsed_seconds, sparkline

    falling = [10.0 - i / 100 for i in range(600)]
    line = sparkline(falling)
    assert len(line) == 60 and line[0] == "█" and line[-1] == "▁"
    assert sparkline(falling[:5]) == "█▆▅▃▁"  # five points: five bars

    job = {"id": "job_c", "name": "spam", "status": "running", "model_id": None,
           "error": None, "train_loss": None, "eval_loss": None, "cancel_requested": False,
           "started_at": "2026-11-29T05:39:42.980646Z", "finished_at": None,
           "progress": {"step": 44, "total_steps": 88, "tokens_seen": 0,
                        "tokens_per_second": None, "eta_seconds": None}}
    assert elapsed_seconds(job, now=datetime(2026, 11, 29, 5, 41, 0, tzinfo=UTC)) == \
        pytest.approx(77.019354)
    state = WatchState()
    state.apply(StreamEvent("status", "a", job))
    state.apply(StreamEvent("metric", "b", {"step": 44, "train_loss": 0.61,
                                            "tokens_per_second": 1040.0}))
    state.apply(StreamEvent("metric", "c", {"step": 44, "eval_loss": 0.606,
                                            "accuracy": 0.6781, "f1": 0.4041}))
    console = Console(width=100, record=True)
    console.print(state.render())
    text = console.export_text()
    assert "eval 0.6060   accuracy 0.6781   f1 0.4041" in text, text
    assert "elapsed " in text and "ETA " in text
    state.apply(StreamEvent("status", "d", {**job, "status": "succeeded",
                                            "finished_at": "2026-11-29T05:40:24.686969Z"}))
    console = Console(width=100, record=True)
    console.print(state.render())
    text = console.export_text()
    assert "1,040 tokens/s   took 42s" in text and "ETA" not in text, text


def test_jobs_show_reads_as_a_summary():
    """`jobs show` for a person (as `gh run view`): kind, status, progress, losses, when it
    ran and how long it took, its model or its error; --json keeps the API's JSON."""
    from cloze_client.cli import job_lines

    job = {"id": "job_m", "name": "bert-mini-300", "type": "pretrain", "status": "succeeded",
           "spec": {"objective": "mlm"}, "dataset_id": "ds_c", "model_id": "m_a",
           "train_loss": 6.25184, "eval_loss": 6.2341, "attempts": 1, "error": None,
           "cancel_requested": False, "created_at": "2026-11-29T05:17:46.570473Z",
           "started_at": "2026-11-29T05:17:46.691996Z",
           "finished_at": "2026-11-29T05:39:23.706371Z",
           "progress": {"step": 300, "total_steps": 300, "tokens_seen": 614400,
                        "tokens_per_second": 2320.7, "eta_seconds": None}}
    lines = job_lines(job)  # type: ignore[arg-type]
    assert lines[0] == "job_m bert-mini-300: pretrain (mlm), succeeded"
    assert lines[1].split(None, 1)[1] == "300/300 steps, 614,400 tokens, 2,321 tokens/s"
    assert lines[2].split(None, 1)[1] == "train 6.2518, eval 6.2341"
    assert lines[3].split(None, 1)[1] == \
        "started 2026-11-29 05:17:46 UTC, finished 05:39:23, took 21m 37s"
    assert "m_a" in lines[5]
    failed = {**job, "status": "failed", "model_id": None, "finished_at": None,
              "started_at": None, "error": {"code": "too_big", "message": "needs 9 GB"}}
    lines = job_lines(failed)  # type: ignore[arg-type]
    assert lines[3].split(None, 1)[1] == "created 2026-11-29 05:17 UTC, not started"
    assert lines[-1].split(None, 1)[1] == "too_big: needs 9 GB"
