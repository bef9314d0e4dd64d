"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright).

- With API keys (the whole app served in this process, metric points recorded as the
  worker records them): the key typed once is kept for the tab and sent on every call, the
  stream included; a dry run from the job form; the jobs table, a job's live curves, the
  comparison of two runs; another owner's job shows nothing of it; numbers and axis ticks
  read as they are; a sweep's list and page (trial table, its plot, cancel).
- On the embedded default (no keys), with a real worker: a corpus uploaded and a tiny
  pretraining job submitted through the forms, the running job in the jobs table, its
  loss curve drawn while it trains (a screenshot is saved), then fill-mask on its model.
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.inprocess import make_app, make_key
from tests.stack import Stack, corpus_slice
from tests.test_stream import Served

CHROMIUM = Path(os.environ.get("CLOZE_TEST_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
    if why is None and not CHROMIUM.exists():
        why = f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    if why is not None:
        if IN_CI:
            pytest.fail(f"CI runs the browser tests: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The pages' own Content-Security-Policy must not block anything they do.
    page.on("console", lambda m: errors.append(m.text)
            if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not errors, f"script errors or CSP violations on the page: {errors}"


def points(page: Any, chart: str, series: str) -> int:
    """How many points a chart's series has (0 if not drawn), read from the page."""
    return int(page.evaluate(
        """([chart, series]) => {
            const g = document.querySelector(`#${chart} g.series[data-name="${series}"]`);
            if (!g) return 0;
            // count the path's own vertices, not only the attribute the script wrote
            const vertices = (g.querySelector("path").getAttribute("d").match(/[ML]/g) || []);
            return Math.min(Number(g.dataset.points), vertices.length);
        }""", [chart, series]))


def wait_points(page: Any, chart: str, series: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (n := points(page, chart, series)) < at_least:
        assert time.monotonic() < deadline, f"{chart}/{series}: {n} points, not {at_least}"
        time.sleep(0.25)
    return n


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- with keys, in this process -------------------------------------------------------

def new_job(owner: str, name: str) -> str:
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    job_id = new_id("job")
    with session_scope() as s:
        s.add(lifecycle.new_job(id=job_id, owner=owner, type="pretrain", name=name,
                                spec={"name": name, "objective": "mlm"},
                                dataset_id="ds_none", total_steps=200))
    with session_scope() as s:
        assert lifecycle.claim(s, job_id, max_attempts=3) == lifecycle.Claim.CLAIMED
    return job_id


def record(job_id: str, steps: range, loss_at_zero: float = 9.0) -> None:
    from service.storage import get_store
    from workers.db_reporter import DbReporter

    reporter = DbReporter(job_id, get_store())
    for step in steps:
        reporter.log({"step": step, "train_loss": loss_at_zero - step / 40,
                      "learning_rate": 1e-3, "grad_norm": 1.0,
                      "tokens_per_second": 900.0 + step, "tokens_seen": step * 512})
        if step % 20 == 0:
            reporter.eval({"step": step, "eval_loss": loss_at_zero + 0.3 - step / 40,
                           "perplexity": 100.0, "accuracy": 0.1})
    reporter.event("info", f"logged up to step {steps[-1]}")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        served = Served(app)
        yield served
        served.stop()


def test_with_keys_live_curves_and_comparison(served: Served, page: Any,
                                               tmp_path: Path) -> None:
    alice, bob = make_key("alice"), make_key("bob")
    first, second = new_job("alice", "first-run"), new_job("alice", "second-run")
    record(first, range(5, 101, 5))
    record(second, range(5, 61, 5), loss_at_zero=8.0)

    # No key yet: the page says one is needed.
    page.goto(served.url + "/")
    page.wait_for_selector("#notice:not([hidden])")
    assert "key" in page.inner_text("#notice")
    page.fill("#key-input", alice)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"tr[data-job='{first}']")
    assert page.locator(f"tr[data-job='{second}']").count() == 1
    assert "running" in page.inner_text(f"tr[data-job='{first}']")
    assert page.is_hidden("#notice")

    # The key is kept for the tab: an upload through the form is alice's.
    corpus = tmp_path / "upload.txt"
    corpus.write_text("in the beginning was the word.\nand the word was with god.\n" * 50)
    page.goto(served.url + "/new")
    page.set_input_files("#file", str(corpus))
    page.click("#upload-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelector('#notice').innerText.includes('Uploaded ds_')")
    dataset_id = page.inner_text("#notice").split()[1].rstrip(":")
    with httpx.Client(base_url=served.url, timeout=30) as http:
        mine = http.get(f"/v1/datasets/{dataset_id}", headers=bearer(alice))
        assert mine.status_code == 200 and mine.json()["documents"] == 100
        theirs = http.get(f"/v1/datasets/{dataset_id}", headers=bearer(bob))
        assert theirs.status_code == 404

    # A dry run from the job form (on the dataset just uploaded): what the job would do,
    # and nothing made.
    with httpx.Client(base_url=served.url, timeout=30) as http:
        jobs_before = http.get("/v1/jobs", headers=bearer(alice)).json()["data"]
        page.fill("#spec", json.dumps({"name": "estimated", "model": {"size": "tiny"},
                                       "hyperparameters": {"max_steps": 50}}))
        page.click("#estimate-button")
        page.wait_for_selector("#estimate-table")
        said = page.inner_text("#estimate")
        assert "50 (" in said and "100 documents" in said and "nothing was created" in said
        assert "about " in said and "tokens/s" in said
        assert http.get("/v1/jobs", headers=bearer(alice)).json()["data"] == jobs_before

    # The job page streams with the key, and draws new points live.
    page.goto(f"{served.url}/jobs/{first}")
    assert wait_points(page, "chart-loss", "train_loss", 20, timeout=30) == 20
    assert wait_points(page, "chart-loss", "eval_loss", 5, timeout=10) == 5
    assert wait_points(page, "chart-lr", "learning_rate", 20, timeout=10) == 20
    assert wait_points(page, "chart-speed", "tokens_per_second", 20, timeout=10) == 20
    page.wait_for_selector("#log div")
    assert "logged up to step 100" in page.inner_text("#log")
    assert '"name": "first-run"' in page.inner_text("#spec")
    record(first, range(105, 141, 5))
    assert wait_points(page, "chart-loss", "train_loss", 28, timeout=30) == 28
    page.wait_for_function("() => document.querySelector('#log').innerText.includes('step 140')")

    # Two runs on one chart, chosen on the jobs table.
    page.goto(served.url + "/")
    for job_id in (first, second):
        page.check(f"tr[data-job='{job_id}'] input[type=checkbox]")
    page.click("#compare-button")
    page.wait_for_url("**/compare?ids=*")
    assert set(page.url.split("ids=")[1].split(",")) == {first, second}
    page.wait_for_selector("#chart-train g.series >> nth=1", state="attached")
    assert points(page, "chart-train", first) == 28
    assert points(page, "chart-train", second) == 12
    assert points(page, "chart-eval", second) == 3

    # Another owner: the job's page shows a 404 and none of its points.
    page.fill("#key-input", bob)
    page.click("#key-form button[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{served.url}/jobs/{first}")
    page.wait_for_selector("#notice:not([hidden])")
    assert "not_found" in page.inner_text("#notice")
    assert points(page, "chart-loss", "train_loss") == 0

    # sessionStorage: a new tab of a new session starts without a key.
    fresh = page.context.browser.new_page()
    fresh.goto(served.url + "/")
    fresh.wait_for_selector("#notice:not([hidden])")
    assert fresh.inner_text("#key-state") == "no key"
    fresh.close()


def axis_labels(page: Any, chart: str) -> list[str]:
    """The y axis's tick labels of a chart, top to bottom as drawn (right-aligned texts)."""
    return list(page.eval_on_selector_all(
        f"#{chart} > text[text-anchor='end']", "nodes => nodes.map(n => n.textContent)"))


def test_numbers_read_as_they_are(served: Served, page: Any) -> None:
    """What a user reads on the pages: 320 tokens/s reads 320 (it read "32"), the ticks of
    a learning rate decaying from 1e-3 to 9.5e-4 are all different (they all read "1e-3"),
    and the jobs table fits the window (its date column pushed the page past the header)."""
    from service.storage import get_store
    from workers.db_reporter import DbReporter

    alice = make_key("alice")
    job_id = new_job("alice", "a-run-with-a-rather-long-name-to-fit-in-the-table")
    reporter = DbReporter(job_id, get_store())
    for step in range(5, 105, 5):
        reporter.log({"step": step, "train_loss": 7.0 - step / 100,
                      "learning_rate": 1e-3 - step * 5e-7, "tokens_per_second": 320.0,
                      "tokens_seen": step * 2048})

    page.goto(served.url + "/")
    page.fill("#key-input", alice)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"tr[data-job='{job_id}']")
    assert page.evaluate("""() => document.documentElement.scrollWidth <= window.innerWidth
        && document.querySelector('#jobs').scrollWidth
           <= document.querySelector('main').clientWidth""")
    cells = page.locator(f"tr[data-job='{job_id}'] td")
    created, shown_id = cells.nth(9), cells.nth(1).locator("a")
    assert len(created.inner_text()) <= 14 and created.get_attribute("title")
    assert shown_id.get_attribute("title") == job_id  # cut short on the page, whole on hover

    page.goto(f"{served.url}/jobs/{job_id}")
    wait_points(page, "chart-lr", "learning_rate", 20, timeout=30)
    page.wait_for_function("() => document.querySelector('#facts').innerText.includes('320')")
    speed = page.locator("#facts > div", has_text="tokens/s").inner_text()
    assert speed.split() == ["tokens/s", "320"], speed
    ticks = axis_labels(page, "chart-lr")
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks
    assert all(0.0009 <= float(t) <= 0.00101 for t in ticks), ticks
    tokens = axis_labels(page, "chart-speed")
    assert len(set(tokens)) == len(tokens), tokens


def test_sweeps_list_and_page(served: Served, page: Any) -> None:
    """A sweep on the dashboard: listed at /sweeps with its best value so far; its page has
    the trial table (params, status, value, the best so far marked), the sweep's plot (its
    metrics.svg, fetched with the key), a comparison of the trials' curves; cancelling it
    there cancels the trials left; another owner sees none of it."""
    from service import sweeper
    from tests.test_sweeps import _run, sweep

    alice, bob = make_key("alice"), make_key("bob")
    with httpx.Client(base_url=served.url, timeout=30, headers=bearer(alice)) as http:
        dataset = http.post("/v1/datasets", files={"file": ("t.txt", b"the cat sat.\n" * 50)})
        created = http.post("/v1/sweeps", json=sweep(dataset.json()["id"], name="lr-search",
                                                     trials=3, parallel=2))
        assert created.status_code == 202, created.text
        sweep_id = created.json()["id"]
        first = created.json()["trials"][0]["job_id"]
        _run(first, {10: 3.0, 20: 2.5}, end="succeeded")
        sweeper.after_trial_event(first)  # what the worker calls as the job ends
        shown = http.get(f"/v1/sweeps/{sweep_id}").json()
    # The API names the best trial once the sweep has ended; the pages show the best so far.
    assert shown["best_job_id"] is None and shown["trials"][0]["value"] == 2.5

    page.goto(served.url + "/sweeps")
    page.fill("#key-input", alice)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"tr[data-sweep='{sweep_id}']")
    listed = page.inner_text(f"tr[data-sweep='{sweep_id}']")
    assert "lr-search" in listed and "running" in listed and "minimize eval_loss" in listed
    assert page.inner_text(f"tr[data-sweep='{sweep_id}'] td.best") == "2.5"

    page.click(f"a[href='/sweeps/{sweep_id}']")
    page.wait_for_selector("#trials tr[data-trial='0']")
    rows = {t["number"]: t for t in shown["trials"]}
    assert page.locator("#trials tr").count() == len(rows) >= 2
    best = page.inner_text("#trials tr[data-trial='0']")
    lr = rows[0]["params"]["hyperparameters.learning_rate"]
    assert first[:8] in best and "succeeded" in best and "★ best so far" in best
    assert f"learning_rate {lr:.3g}" in best, (best, lr)
    assert "★" not in page.inner_text("#trials tr[data-trial='1']")
    page.wait_for_function(  # the plot drew: an image of the sweep's SVG
        "() => { const i = document.querySelector('#sweep-plot');"
        " return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); }")
    compare = page.get_attribute("a[href^='/compare?ids=']", "href")
    assert set(compare.split("ids=")[1].split(",")) == {t["job_id"] for t in rows.values()}
    shot = Path(os.environ.get("CLOZE_TEST_SHOTS", "/tmp")) / "sweep-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the sweep page: {shot}")

    page.click("#cancel")
    page.wait_for_selector("main h1 [data-status='cancelled']")
    assert page.locator("#cancel").count() == 0
    with httpx.Client(base_url=served.url, timeout=30, headers=bearer(alice)) as http:
        after = http.get(f"/v1/sweeps/{sweep_id}").json()
    assert after["status"] == "cancelled"
    assert {t["status"] for t in after["trials"][1:]} == {"cancelled"}

    page.fill("#key-input", bob)
    page.click("#key-form button[type=submit]")
    page.wait_for_load_state()
    page.wait_for_selector("#notice:not([hidden])")
    assert "not_found" in page.inner_text("#notice")
    assert page.locator("#trials tr").count() == 0
    page.goto(served.url + "/sweeps")
    page.wait_for_selector("#sweeps-body tr")
    assert "No sweeps yet" in page.inner_text("#sweeps-body")


def test_dataset_list_and_view(served: Served, page: Any) -> None:
    """A CSV on the dashboard: listed at /datasets; its view shows each column's type and
    role, the label counts of the label column, a length histogram of the text column and
    the first records, quoted newlines and all."""
    alice = make_key("alice")
    csv_bytes = ('sentence,gold_label\n"one\ntwo",yes\nthree,no\nfour,yes\n' +
                 "".join(f"row {i},yes\n" for i in range(5))).encode()
    with httpx.Client(base_url=served.url, timeout=30, headers=bearer(alice)) as http:
        dataset = http.post("/v1/datasets", files={"file": ("nli.csv", csv_bytes)}).json()
    page.goto(served.url + "/datasets")
    page.fill("#key-input", alice)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"tr[data-dataset='{dataset['id']}']")
    assert "labelled text" in page.inner_text(f"tr[data-dataset='{dataset['id']}']")
    page.click(f"a[href='/datasets/{dataset['id']}']")
    page.wait_for_selector("#columns tr[data-column='gold_label']")
    label = page.inner_text("#columns tr[data-column='gold_label']")
    assert "label" in label and "yes 7" in label and "no 1" in label, label
    text = page.inner_text("#columns tr[data-column='sentence']")
    assert "string" in text and "text" in text and "length 4" in text, text
    assert page.locator("#columns tr[data-column='sentence'] .bar").count() > 0
    assert page.locator("#records tbody tr").count() == 8
    assert "one\ntwo" in page.inner_text("#records tbody tr:first-child")
    assert "8 documents" in page.inner_text("#dataset-summary")


# --- the embedded default, a real worker ------------------------------------------------

def test_embedded_train_watch_and_fill_mask(embedded_stack: Stack, data_dir: Path,
                                            page: Any, tmp_path: Path) -> None:
    url = embedded_stack.url
    corpus = tmp_path / "kjv-slice.txt"
    corpus.write_bytes(corpus_slice(data_dir / "en-valid.txt.gz", 300_000))

    # Upload through the form, then submit a tiny job through the other.
    page.goto(url + "/new")
    page.set_input_files("#file", str(corpus))
    page.fill("#dataset-name", "browser-upload")
    page.click("#upload-form button[type=submit]")
    page.wait_for_function(
        "() => document.querySelector('#notice').innerText.includes('Uploaded ds_')")
    dataset_id = page.inner_text("#notice").split()[1].rstrip(":")
    assert page.eval_on_selector("#dataset", "s => s.value") == dataset_id
    spec = {"type": "pretrain", "objective": "mlm", "name": "browser-bert",
            "validation_fraction": 0.05, "model": {"architecture": "bert", "size": "tiny"},
            "tokenizer": {"type": "wordpiece", "vocab_size": 2000, "lowercase": True},
            "hyperparameters": {"max_steps": 200, "batch_size": 16, "sequence_length": 64,
                                "learning_rate": 2e-3, "warmup_steps": 5, "seed": 0},
            "log_every": 2, "eval_every": 20, "checkpoint_every": 100}
    page.fill("#spec", json.dumps(spec))
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[1]

    # The jobs table lists it, running.
    page.goto(url + "/")
    page.wait_for_selector(f"tr[data-job='{job_id}'] [data-status='running']", timeout=120_000)
    assert "browser-bert" in page.inner_text(f"tr[data-job='{job_id}']")

    # Its page draws the loss curve as it trains.
    page.goto(f"{url}/jobs/{job_id}")
    drawn = wait_points(page, "chart-loss", "train_loss", 25, timeout=300)
    shot = tmp_path / "job-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the job page while training ({drawn} points): {shot}")
    assert shot.stat().st_size > 10_000
    status = page.get_attribute("main h1 .status", "data-status")
    assert status == "running", "the job finished before the curve was seen live"

    # To the end: every logged step drawn, eval points, checkpoints, a model.
    page.wait_for_selector("main h1 [data-status='succeeded']", timeout=600_000)
    assert wait_points(page, "chart-loss", "train_loss", 100, timeout=30) == 100
    assert wait_points(page, "chart-loss", "eval_loss", 10, timeout=10) == 10
    page.wait_for_function("() => document.querySelectorAll('#checkpoints tr').length >= 2")
    assert page.eval_on_selector_all("#checkpoints tr td:first-child",
                                     "cells => cells.map(c => c.innerText)") == ["100", "200"]
    curve = embedded_stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert len([p for p in curve if "train_loss" in p]) == 100
    final = tmp_path / "job-page-final.png"
    page.screenshot(path=str(final), full_page=True)
    print(f"screenshot of the finished job: {final}")

    # Fill-mask on its model from the playground.
    model_id = embedded_stack.client.get(f"/v1/jobs/{job_id}").json()["model_id"]
    page.click(f"a[href='/playground?model={model_id}']")
    page.wait_for_selector(f"#model option[value='{model_id}']", state="attached")
    assert page.eval_on_selector("#model", "s => s.value") == model_id
    page.fill("#inputs", "and god said, let there be [MASK].")
    page.click("#fill-mask-form button[type=submit]")
    page.wait_for_selector("table.answers tbody tr")
    assert page.locator("table.answers tbody tr").count() == 5


# --- without a browser -----------------------------------------------------------------

def test_pages_and_files_are_served_safely(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The pages need no key (they hold no data) but forbid framing and any script not
    ours; only the dashboard's own files are served; the data behind them still needs a key;
    a foreign Host is refused on the pages as on the API (DNS rebinding)."""
    from tests.inprocess import client

    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true") as app:
        http = client(app)
        for path in ("/", "/jobs/job_abc", "/compare?ids=a,b", "/playground", "/new",
                     "/sweeps", "/sweeps/swp_abc"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
        for name in ("common.js", "chart.js", "job.js", "style.css"):
            assert http.get(f"/web/{name}").status_code == 200
        for name in ("shell.html", "..%2F..%2Fsettings.py", "nope.js", "%2Fetc%2Fpasswd"):
            r = http.get(f"/web/{name}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert http.get("/v1/jobs").status_code == 401
    with make_app(tmp_path, monkeypatch) as app:  # keyless loopback: Host is checked
        r = client(app).get("/", headers={"Host": "evil.example"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
