"""An evaluate job through the API with real workers on Postgres and Redis: a tiny BERT
pretrained here, evaluated on two tasks the tests carry (spam e-mails: text
classification; Brown part-of-speech tags: token classification). It makes the table
(model, random init, baseline, difference and sign), survives a kill -9 of its worker
mid-suite without redoing a finished cell, puts the table on the model card, is cancelled
cleanly, goes on from its finished cells after a pause, and refuses bad suites with a 4xx
naming the field."""

import collections
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.stack import Stack, corpus_slice
from tests.test_e2e_finetune import conll_slice, spam_slice

pytestmark = pytest.mark.slow

# Every fine-tune of the suite: short, so that the suite is minutes (the defaults are
# "auto", which the bench measures).
HYPERPARAMETERS = {"max_steps": 30, "batch_size": 16, "sequence_length": 64,
                   "learning_rate": 2e-3}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_url, redis_url) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("evaluate")
    s = Stack(home, {
        "CLOZE_DATABASE_URL": postgres_url, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"evaluate-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
        # A killed worker's job is given to the next one within seconds.
        "CLOZE_HEARTBEAT_INTERVAL_S": "0.5", "CLOZE_HEARTBEAT_TIMEOUT_S": "5",
        "CLOZE_REAPER_INTERVAL_S": "1", "CLOZE_REQUEUE_AFTER_S": "20",
        "CLOZE_MAX_ACTIVE_JOBS": "100",
    }, embedded=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def model(stack: Stack, data_dir) -> str:
    ds = stack.upload("base.txt", corpus_slice(data_dir / "en-pretrain.txt.gz", 600_000))
    job = stack.client.post("/v1/jobs", json={
        "dataset_id": ds.json()["id"], "model": {"size": "tiny"},
        "tokenizer": {"vocab_size": 2000},
        "hyperparameters": {"max_steps": 120, "batch_size": 32, "sequence_length": 64,
                            "learning_rate": 2e-3, "warmup_steps": 10},
        "eval_every": 60, "checkpoint_every": 120}).json()
    done = stack.wait_job(job["id"], timeout=900)
    assert done["status"] == "succeeded", done
    return done["model_id"]


@pytest.fixture(scope="module")
def suite(stack: Stack, data_dir) -> list[dict]:
    spam = stack.upload("spam.jsonl", spam_slice(
        data_dir, {"train": 300, "valid": 60, "test": 120}), name="spam").json()
    pos = {split: stack.upload(f"brown-{split}.conll", conll_slice(
        data_dir / f"brown-{split}.conll.gz", n), name=f"brown-pos-{split}").json()
        for split, n in (("train", 600), ("valid", 100), ("test", 200))}
    return [{"task": "text_classification", "dataset_id": spam["id"]},
            {"task": "token_classification", "dataset_id": pos["train"]["id"],
             "validation_dataset_id": pos["valid"]["id"], "test_dataset_id": pos["test"]["id"],
             "name": "brown-pos"}]


def evaluate(stack: Stack, model: str, suite: list[dict], **more) -> dict:
    r = stack.client.post("/v1/jobs", json={
        "type": "evaluate", "model_id": model, "suite": suite,
        "hyperparameters": HYPERPARAMETERS, **more})
    assert r.status_code == 202, r.text
    return r.json()


def events(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.client.get(
        f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]]


def test_the_table_survives_a_killed_worker(stack, model, suite, data_dir, tmp_path):
    # What it would do, before it is submitted: each task's fine-tunes, added up.
    dry = stack.client.post("/v1/jobs", params={"dry_run": "true"}, json={
        "type": "evaluate", "model_id": model, "suite": suite,
        "hyperparameters": HYPERPARAMETERS})
    assert dry.status_code == 200, dry.text
    assert [t["steps"] for t in dry.json()["tasks"]] == [30, 30]
    assert dry.json()["steps"] == 2 * 2 * 30  # the model and random init, on each task

    # Two cells at once (threads of the worker), as resources.processes asks.
    job = evaluate(stack, model, suite, resources={"processes": 2})
    assert job["type"] == "evaluate" and job["progress"]["total_steps"] == 6  # cells
    # Two cells done (the spam task's baseline and model), then the worker dies.
    stack.wait_until(job["id"], lambda j: (j.get("evaluation") or {}).get("cells_done", 0)
                     >= 2, "two cells done", timeout=600)
    before = stack.client.get(f"/v1/jobs/{job['id']}").json()["evaluation"]
    stack.kill("worker")
    stack.start_worker()
    final = stack.wait_job(job["id"], timeout=900)
    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["attempts"] == 2

    table = final["evaluation"]
    assert table["cells_done"] == table["cells_total"] == 6
    spam, pos = table["rows"]
    assert (spam["task"], spam["metric"]) == ("spam", "accuracy")
    assert (pos["task"], pos["metric"]) == ("brown-pos", "accuracy")
    for row in (spam, pos):
        for column in ("model", "random_init", "baseline"):
            assert 0 <= row[column] <= 1, row
        assert row["difference"] == pytest.approx(row["model"] - row["random_init"])
        assert row["sign"] == ("=" if abs(row["difference"]) < table["tie"]
                               else "+" if row["difference"] > 0 else "-")
    assert spam["baseline_name"] == "TF-IDF + logistic regression"
    assert pos["baseline_name"] == "most frequent tag per word"
    # The most frequent tag per word tags most of the Brown test words right.
    assert pos["baseline"] > 0.7, pos
    # What was done before the kill was kept as it was: not redone, not changed.
    for old, new in zip(before["rows"], table["rows"], strict=True):
        for column in ("model", "random_init", "baseline"):
            if old[column] is not None:
                assert new[column] == old[column]
    log = events(stack, job["id"])
    assert any("not redone" in m for m in log), log
    # Each cell's score is recorded once: "spam / model: test accuracy 0.9167 (12 s)".
    scored = collections.Counter(m.split(":", 1)[0] for m in log
                                 if re.search(r": (test \w+ [\d.]+|no baseline) \(\d+ s\)$", m))
    assert all(n == 1 for n in scored.values()) and len(scored) == 6, scored

    # The table on the evaluated model's card.
    card = (stack.download(model, tmp_path) / "README.md").read_text()
    assert f"## Evaluation ({job['id']})" in card and "brown-pos" in card, card


def test_cancelled_mid_suite(stack, model, suite):
    job = evaluate(stack, model, suite[:1], random_init=True)
    stack.wait_until(job["id"], lambda j: (j.get("evaluation") or {}).get("cells_done", 0)
                     >= 1, "a cell done", timeout=600)
    r = stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    final = stack.wait_job(job["id"], timeout=300)
    assert final["status"] == "cancelled", final
    done = final["evaluation"]["cells_done"]
    assert 1 <= done < 3
    time.sleep(2)  # nothing more is recorded after the end
    assert stack.client.get(f"/v1/jobs/{job['id']}").json()["evaluation"]["cells_done"] == done


def test_paused_and_resumed_goes_on_from_the_cells_done(stack, model, suite):
    job = evaluate(stack, model, suite[:1])
    stack.wait_until(job["id"], lambda j: (j.get("evaluation") or {}).get("cells_done", 0)
                     >= 1, "a cell done", timeout=600)
    assert stack.client.post(f"/v1/jobs/{job['id']}/pause").status_code == 200
    paused = stack.wait_until(job["id"], lambda j: j["status"] == "paused", "paused",
                              timeout=300)
    done = paused["evaluation"]["cells_done"]
    assert stack.client.post(f"/v1/jobs/{job['id']}/resume").status_code == 200
    final = stack.wait_job(job["id"], timeout=600)
    assert final["status"] == "succeeded", final
    assert final["evaluation"]["cells_done"] == 3
    log = events(stack, job["id"])
    assert any(f"{done} of 3 cells were finished by an earlier attempt" in m for m in log), log


def test_bad_suites_are_refused_naming_the_field(stack, model, suite, data_dir):
    def refused(body: dict) -> tuple[int, str | None, str]:
        r = stack.client.post("/v1/jobs", json={"type": "evaluate", "model_id": model,
                                                 **body})
        error = r.json().get("error", {})
        return r.status_code, error.get("param"), error.get("message", "")

    assert refused({"suite": []})[:2] == (422, "suite")
    assert refused({"model_id": "m_nope", "suite": suite})[:2] == (422, "model_id")
    assert refused({"compare_model_id": model, "suite": suite})[:2] == \
        (422, "compare_model_id")
    status, param, message = refused({"suite": [{**suite[0], "task": "token_classification"}]})
    assert (status, param) == (422, "suite.0.dataset_id"), message
    no_test = stack.upload("few.jsonl", spam_slice(data_dir, {"train": 40, "valid": 10}))
    status, param, message = refused({"suite": [
        suite[1], {"task": "text_classification", "dataset_id": no_test.json()["id"]}]})
    assert (status, param) == (422, "suite.1.dataset_id") and "test split" in message
    status, param, _ = refused({"suite": [{**suite[0], "columns": {"text": "body"}}]})
    assert (status, param) == (422, "suite.0.columns"), param
    status, param, _ = refused({"suite": [suite[0], suite[0]]})
    assert (status, param) == (422, "suite.1")
    # "uploaded": every dataset of yours with labels and a test split (not the pretraining
    # text, not the spam slice without a test split), resolved at submission.
    dry = stack.client.post("/v1/jobs", params={"dry_run": "true"}, json={
        "type": "evaluate", "model_id": model, "suite": "uploaded"})
    assert dry.status_code == 200, dry.text
    resolved = dry.json()["spec"]["suite"]
    assert {(t["name"], t["task"]) for t in resolved} == {("spam", "text_classification")}
    # A sweep's trials are training jobs: an evaluate job is not one.
    r = stack.client.post("/v1/sweeps", json={
        "base": {"type": "evaluate", "model_id": model, "suite": suite},
        "search_space": {"hyperparameters.learning_rate": {
            "type": "loguniform", "low": 1e-4, "high": 1e-3}}, "trials": 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "base.type", r.text
    # A model an unfinished evaluate job reads cannot be deleted from under it.
    job = evaluate(stack, model, suite[:1], random_init=False)
    r = stack.client.delete(f"/v1/models/{model}")
    assert r.status_code == 409 and job["id"] in r.text, r.text
    stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert stack.wait_job(job["id"])["status"] == "cancelled"
