"""What a user sees of an evaluate job's table (jobspec/evaluation.py), read from
GET /v1/jobs/{id}'s "evaluation": `cloze jobs show` (the summary, then the table: task,
metric, each way of training it, the baseline and its name, the differences with their
signs, "cells N of M done", blanks for cells not done) and the dashboard's job page (the
same table, filled in while the job runs, no loss curve, names shown as text). The job and
its cells are written as the service and the worker write them (lifecycle, attempts), and
the app is served in this process on SQLite."""

import json
import time
from typing import Any

from typer.testing import CliRunner

from service.cli import app
from tests.inprocess import make_key
from tests.test_dashboard import browser, page, served  # noqa: F401 (fixtures)
from tests.test_stream import Served

# A name with markup in it: user input, shown as it is written (not as HTML, not as rich).
SST2 = "sst2 <b>sentiment</b> [red]"
SPEC = {"type": "evaluate", "name": "bert-vs-roberta", "model_id": "m_pre",
        "compare_model_id": "m_other",
        "suite": [{"task": "text_classification", "dataset_id": "ds_sst2", "name": SST2},
                  {"task": "token_classification", "dataset_id": "ds_conll",
                   "name": "conll ner"}]}
# (task, variant) -> test scores. The 6 of 8 cells done: the second task's baseline and
# comparison are not.
FIRST_CELLS = {
    (0, "baseline"): {"accuracy": 0.7012, "macro_f1": 0.69},
    (0, "model"): {"accuracy": 0.8523, "macro_f1": 0.85},
    (0, "compare_model"): {"accuracy": 0.8500, "macro_f1": 0.84},
    (0, "random_init"): {"accuracy": 0.61, "macro_f1": 0.6},
    (1, "model"): {"accuracy": 0.91, "f1": 0.55},
    (1, "random_init"): {"accuracy": 0.93, "f1": 0.60},
}
LAST_CELLS = {
    (1, "baseline"): {"accuracy": 0.85, "f1": 0.4},
    (1, "compare_model"): {"accuracy": 0.9, "f1": 0.5},
}


def evaluate_job(owner: str) -> str:
    """A running evaluate job, its spec as a submission stores it."""
    from jobspec import evaluation as ev
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    spec = ev.EvaluateSpec.model_validate(SPEC)
    job_id = new_id("job")
    with session_scope() as s:
        s.add(lifecycle.new_job(id=job_id, owner=owner, type="evaluate", name=SPEC["name"],
                                spec=spec.stored_spec(), dataset_id=spec.dataset_id,
                                total_steps=len(spec.tasks) * len(spec.variants())))
    with session_scope() as s:
        assert lifecycle.claim(s, job_id, max_attempts=3) == lifecycle.Claim.CLAIMED
    return job_id


def finish(job_id: str, cells: dict[tuple[int, str], dict[str, float]]) -> None:
    """Cells done, as the worker records each."""
    from jobspec import evaluation as ev
    from service.db import session_scope
    from service.domain import attempts

    for (task, variant), metrics in cells.items():
        with session_scope() as s:
            attempts.record_cell(s, job_id, ev.Cell(
                task_index=task, variant=variant, metrics=metrics,
                steps=None if variant == "baseline" else 120, seconds=3.5))


def test_the_clients_copy_of_the_table_is_the_contracts():
    """cloze_client cannot import jobspec: its TypedDicts name the same fields."""
    from cloze_client.types import Evaluation, EvaluationRow
    from jobspec.evaluation import Row, Table

    assert set(EvaluationRow.__annotations__) == set(Row.model_fields)
    assert set(Evaluation.__annotations__) == set(Table.model_fields)


def test_jobs_show_prints_the_table(served: Served) -> None:  # noqa: F811
    key = make_key("alice")
    job_id = evaluate_job("alice")
    finish(job_id, FIRST_CELLS)

    def show(*args: str) -> str:
        result = CliRunner().invoke(app, ["jobs", "show", job_id, *args, "--url", served.url,
                                          "--api-key", key])
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    out = show()
    lines = out.splitlines()
    assert lines[0] == f"{job_id} bert-vs-roberta: evaluate (m_pre vs m_other), running"
    assert lines[1].split(None, 1)[1].startswith("6/8 cells")
    assert not any(line.split()[0] in ("loss", "dataset", "model") for line in lines[:6]
                   if line.strip())
    head = next(i for i, line in enumerate(lines) if line.startswith("task"))
    assert lines[head].split("  ")[0] == "task" and "compare model" in lines[head] \
        and "random init" in lines[head] and "model - random init" in lines[head] \
        and "model - compare" in lines[head]
    first, second = lines[head + 1], lines[head + 2]
    # The name as written; its scores; the baseline with its name; +0.2423 over random
    # init; a tie with the compared model (0.0023 is under the table's 0.005).
    assert first.startswith(SST2 + "  ")
    assert first.split(SST2)[1].split() == [
        "accuracy", "0.8523", "0.8500", "0.6100", "0.7012", "(TF-IDF", "+", "logistic",
        "regression)", "+0.2423", "(+)", "+0.0023", "(=)"]
    # Entity tags judged by entity F1; random init did better (-); the baseline and the
    # comparison not done yet: blank.
    assert second.split() == ["conll", "ner", "f1", "0.5500", "0.6000", "-0.0500", "(-)"]
    assert lines[head + 3] == "cells 6 of 8 done"

    finish(job_id, LAST_CELLS)
    second = show().splitlines()[head + 2]
    assert second.split() == ["conll", "ner", "f1", "0.5500", "0.5000", "0.6000", "0.4000",
                              "(most", "frequent", "tag", "per", "word)", "-0.0500", "(-)",
                              "+0.0500", "(+)"]
    assert show().splitlines()[-1] == "cells 8 of 8 done"
    # --json: the API's job, the table as it sent it.
    raw = json.loads(show("--json"))
    assert raw["evaluation"]["cells_done"] == 8 and raw["evaluation"]["rows"][0]["task"] == SST2


def test_jobs_show_without_random_init_or_comparison(served: Served) -> None:  # noqa: F811
    """The columns a job does not train are not shown."""
    from cloze_client.cli import evaluation_table

    job: Any = {"spec": {**SPEC, "compare_model_id": None, "random_init": False}}
    table: Any = {"rows": [{"task": "t", "task_type": "regression", "dataset_id": "ds_r",
                            "metric": "pearson", "model": 0.5, "compare_model": None,
                            "random_init": None, "baseline": 0.0,
                            "baseline_name": "training mean", "difference": None,
                            "sign": None, "compare_difference": None, "compare_sign": None}],
                  "cells_done": 2, "cells_total": 2, "tie": 0.005}
    columns, rows, done = evaluation_table(job, table)
    assert columns == ["task", "metric", "model", "baseline"]
    assert [str(c) for c in rows[0]] == ["t", "pearson", "0.5000", "0.0000 (training mean)"]
    assert done == "cells 2 of 2 done"


def cell_texts(on: Any, task: int) -> list[str]:
    return list(on.eval_on_selector_all(f"#evaluation-table tr[data-task='{task}'] td",
                                          "tds => tds.map(td => td.textContent)"))


def test_the_job_page_shows_the_table_and_fills_it_in(served: Served,  # noqa: F811
                                                       page: Any) -> None:  # noqa: F811
    key = make_key("alice")
    job_id = evaluate_job("alice")
    finish(job_id, FIRST_CELLS)
    page.goto(served.url + "/")
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"tr[data-job='{job_id}']")

    page.goto(f"{served.url}/jobs/{job_id}")
    page.wait_for_selector("#evaluation-table tr[data-task='1']")
    heads = page.eval_on_selector_all("#evaluation-table th", "ths => ths.map(t => t.textContent)")
    assert heads == ["task", "metric", "model", "compare model", "random init", "baseline",
                     "model − random init", "model − compare"]
    # The name as text (no <b> element made of it), the scores, the signs.
    assert cell_texts(page, 0) == [SST2, "accuracy", "0.8523", "0.8500", "0.6100",
                                   "0.7012 TF-IDF + logistic regression", "+0.2423 (+)",
                                   "+0.0023 (=)"]
    assert page.locator("#evaluation-table b").count() == 0
    assert cell_texts(page, 1) == ["conll ner", "f1", "0.5500", "", "0.6000", "",
                                   "-0.0500 (-)", ""]
    signs = page.eval_on_selector_all("#evaluation-table [data-sign]",
                                      "s => s.map(e => e.className)")
    assert signs == ["sign plus", "sign tie", "sign minus"]
    assert page.inner_text("#evaluation-done") == "cells 6 of 8 done"
    facts = page.inner_text("#facts")
    assert "m_pre" in facts and "m_other" in facts and "6 / 8" in facts
    # No curve of its own: the charts, their buttons and the checkpoints are not shown.
    assert page.is_hidden("#charts") and page.is_hidden("#checkpoint-section")
    assert page.locator("text=Loss curve as SVG").count() == 0

    # The last cells finish while the page is open: the table fills in (the job's poll).
    finish(job_id, LAST_CELLS)
    deadline = time.monotonic() + 20
    while page.inner_text("#evaluation-done") != "cells 8 of 8 done":
        assert time.monotonic() < deadline, page.inner_text("#evaluation-done")
        time.sleep(0.25)
    assert cell_texts(page, 1) == ["conll ner", "f1", "0.5500", "0.5000", "0.6000",
                                   "0.4000 most frequent tag per word", "-0.0500 (-)",
                                   "+0.0500 (+)"]
    assert page.locator("#notice:not([hidden])").count() == 0
