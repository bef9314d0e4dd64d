"""`cloze sweeps ...` and the client's sweep methods, in-process: the commands run against
the app on SQLite through httpx's transport (no server, no worker). A sweep's trials stay
queued with no worker, which is enough for submit, list, show, plot and cancel; a trial's
end is written as its worker would write it (tests.test_sweeps._run)."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from cloze_client import Client, ClozeError, cli
from cloze_client.cli import sweeps_app
from tests import inprocess
from tests.test_cli_client import ok, one_line_error
from tests.test_sweeps import _run, sweep

# Wide enough that rich wraps no row: the tests split the table's lines into cells.
runner = CliRunner(env={"COLUMNS": "200"})
# The commands as `cloze` mounts them, without the service's own commands.
app = typer.Typer()
app.add_typer(sweeps_app, name="sweeps")


def cloze(*args: str) -> Result:
    return runner.invoke(app, ["sweeps", *args])


class ViaTestClient(httpx.BaseTransport):
    """httpx requests answered by the in-process app (Starlette's TestClient is built on
    another HTTP package, so its transport cannot be handed to httpx itself)."""

    def __init__(self, http: TestClient) -> None:
        self._http = http

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._http.request(request.method, str(request.url),
                                    headers=request.headers.multi_items(),
                                    content=request.read())
        # The body comes decoded: its length and encoding headers no longer describe it.
        headers = [(k, v) for k, v in answer.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


class Api:
    def __init__(self, make_client: Callable[[], Client], dataset_id: str) -> None:
        self.client, self.dataset_id = make_client, dataset_id


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The CLI's Client routed to the in-process app; a dataset for the sweeps' trials."""
    with inprocess.make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0") as fastapi_app:
        http = inprocess.client(fastapi_app)
        r = http.post("/v1/datasets",
                      files={"file": ("t.txt", b"the cat sat on the mat.\n" * 50)})
        assert r.status_code == 201, r.text

        def make(url: str | None = None, api_key: str | None = None) -> Client:
            return Client(url, api_key, transport=ViaTestClient(http))

        monkeypatch.setattr(cli, "Client", make)
        yield Api(make, r.json()["id"])


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec))
    return str(path)


def trial_rows(table: str) -> dict[str, list[str]]:
    """The show command's table: trial number -> its cells (split on blanks)."""
    return {line.split()[0]: line.split() for line in table.splitlines()
            if line.split() and line.split()[0].isdigit()}


def test_submit_list_show_plot_and_cancel(api: Api, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, sweep(api.dataset_id, trials=3, parallel=2, name="lr"))
    submitted = cloze("submit", spec)
    sweep_id = ok(submitted).strip()
    assert sweep_id.startswith("swp_")
    assert "3 trials (2 at once), minimize eval_loss" in submitted.stderr

    assert sweep_id in ok(cloze("list"))
    listed = json.loads(ok(cloze("list", "--json")))
    assert [s["id"] for s in listed["data"]] == [sweep_id]

    shown = ok(cloze("show", sweep_id))
    summary = shown.splitlines()[0]
    assert summary.startswith(f"{sweep_id} 'lr': running, 2/3 trials started")
    assert "best -, model -" in summary
    api_sweep = api.client().get_sweep(sweep_id)
    rows = trial_rows(shown)
    assert set(rows) == {"0", "1"}
    for trial in api_sweep["trials"]:
        cells = rows[str(trial["number"])]
        lr = trial["params"]["hyperparameters.learning_rate"]
        assert cells[1:4] == [trial["job_id"], "queued", "0"]
        assert f"learning_rate={lr:.4g}" in cells
        assert "*" not in cells  # nothing is best yet

    out = tmp_path / "plot.svg"
    assert ok(cloze("plot", sweep_id, "-o", str(out))).strip() == str(out)
    assert "<svg" in out.read_text() and sweep_id in out.read_text()

    cancelled = cloze("cancel", sweep_id)
    ok(cancelled)
    assert cancelled.stderr.strip() == f"{sweep_id}: cancelled"
    after = api.client().get_sweep(sweep_id)
    assert after["status"] == "cancelled"
    assert [t["status"] for t in after["trials"]] == ["cancelled", "cancelled"]
    assert [r[2] for r in trial_rows(ok(cloze("show", sweep_id))).values()] == [
        "cancelled", "cancelled"]


def test_show_marks_the_best_trial_and_the_sweeps_model(api: Api, tmp_path: Path) -> None:
    from service import sweeper

    sweep_id = ok(cloze("submit", write_spec(
        tmp_path, sweep(api.dataset_id, trials=1, parallel=1)))).strip()
    job_id = api.client().get_sweep(sweep_id)["trials"][0]["job_id"]
    _run(job_id, {10: 3.0, 20: 2.5}, end="succeeded")
    sweeper.after_trial_event(job_id)  # what the worker calls as the job ends

    shown = ok(cloze("show", sweep_id))
    assert f"succeeded, 1/1 trials started, minimize eval_loss, best 2.5, model m_{job_id}" \
        in shown.splitlines()[0]
    cells = trial_rows(shown)["0"]
    assert cells[1:3] == [job_id, "succeeded"] and cells[-3:] == ["2.5", "-", "*"]


def test_mistakes_are_one_line(api: Api, tmp_path: Path) -> None:
    for args in (["show", "swp_nope"], ["cancel", "swp_nope"],
                 ["plot", "swp_nope", "-o", str(tmp_path / "x.svg")]):
        one_line_error(cloze(*args), "404", "swp_nope")
    with pytest.raises(ClozeError) as caught:
        api.client().get_sweep("swp_nope")
    assert caught.value.status == 404

    bad = write_spec(tmp_path, {**sweep(api.dataset_id), "trials": 101})
    one_line_error(cloze("submit", bad), "422", "trials")
    one_line_error(cloze("submit", str(tmp_path / "missing.json")), "no such file")

    sweep_id = ok(cloze("submit", write_spec(tmp_path, sweep(api.dataset_id)))).strip()
    one_line_error(cloze("plot", sweep_id, "-o", str(tmp_path / "no" / "dir" / "p.svg")),
                   "p.svg")
    assert api.client().list_sweeps()["data"][0]["id"] == sweep_id  # nothing else made
