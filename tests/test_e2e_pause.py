"""Pause and resume through the API with a real worker: a pretraining job paused mid-run
checkpoints the step it reached and frees the worker (another job runs meanwhile); resumed,
it continues from that checkpoint, and its curve is the uninterrupted run's, step for step."""

from collections.abc import Iterator
from typing import cast

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.stack import Stack, corpus_slice
from tests.test_e2e_pretrain import TINY_JOB

STEPS = 60
# A point per step; an eval and a checkpoint only at the end: the pause's checkpoint is
# the only one the resumed attempt can continue from.
SPEC = {**TINY_JOB, "name": "pausable", "log_every": 1, "eval_every": STEPS,
        "checkpoint_every": STEPS,
        "hyperparameters": {**cast(dict, TINY_JOB["hyperparameters"]), "max_steps": STEPS}}
CURVE_KEYS = ("step", "train_loss", "learning_rate", "grad_norm", "tokens_seen", "eval_loss")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cloze up` whose jobs read their pause flag at every step (not once a second): the
    pause lands a few steps after the request however fast the steps go."""
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    env["CLOZE_STOP_POLL_S"] = "0"
    stack = Stack(tmp_path_factory.mktemp("the pause"), env, embedded=True)
    yield stack
    stack.stop()


def _curve(stack: Stack, job_id: str) -> list[tuple]:
    points = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    return [tuple(p.get(k) for k in CURVE_KEYS) for p in points]


@pytest.mark.slow
def test_a_paused_and_resumed_job_trains_as_if_never_paused(stack, data_dir):
    ds = stack.upload("p.txt", corpus_slice(data_dir / "en-valid.txt.gz", 100_000)).json()
    paused_id = stack.client.post("/v1/jobs", json={**SPEC, "dataset_id": ds["id"]}).json()["id"]

    # 1. Pause mid-run: running and asked to pause, then paused at a checkpointed step.
    stack.wait_until(paused_id, lambda j: j["progress"]["step"] >= 2, "first steps")
    asked = stack.client.post(f"/v1/jobs/{paused_id}/pause")
    assert asked.status_code == 200, asked.text
    assert (asked.json()["status"], asked.json()["pause_requested"]) == ("running", True)
    job = stack.wait_until(paused_id, lambda j: j["status"] == "paused", "the pause")
    assert not job["pause_requested"] and job["finished_at"] is None
    [checkpoint] = stack.client.get(f"/v1/jobs/{paused_id}/checkpoints").json()["data"]
    at = checkpoint["step"]
    assert 2 <= at < STEPS, "the job ended before the pause took effect: use more steps"
    events = [e["message"] for e in stack.client.get(f"/v1/jobs/{paused_id}/events")
              .json()["data"]]
    assert f"paused at step {at}" in events
    assert [p[0] for p in _curve(stack, paused_id)] == list(range(1, at + 1))

    # 2. The worker is free: the same spec, uninterrupted, runs to the end meanwhile.
    whole_id = stack.client.post("/v1/jobs", json={**SPEC, "dataset_id": ds["id"]}).json()["id"]
    whole = stack.wait_job(whole_id)
    assert whole["status"] == "succeeded", (whole, stack.logs())
    assert stack.client.get(f"/v1/jobs/{paused_id}").json()["status"] == "paused"

    # 3. Resume (by the CLI): queued again, it continues from the checkpoint to the end.
    resumed = CliRunner().invoke(app, ["jobs", "resume", paused_id, "--url", stack.url])
    assert resumed.exit_code == 0 and f"{paused_id}: queued" in resumed.stderr, resumed.stderr
    job = stack.wait_job(paused_id)
    assert job["status"] == "succeeded" and job["model_id"], (job, stack.logs())
    events = [e["message"] for e in stack.client.get(f"/v1/jobs/{paused_id}/events")
              .json()["data"]]
    assert f"resumed from the checkpoint of step {at} ({at * 16 * 64} tokens seen)" in events

    # 4. Step for step, the curve of the paused job is the uninterrupted one's.
    curve, reference = _curve(stack, paused_id), _curve(stack, whole_id)
    assert [p[0] for p in reference] == list(range(1, STEPS + 1))
    assert curve == reference

    # A finished job is neither paused nor resumed: one line saying why.
    again = CliRunner().invoke(app, ["jobs", "pause", paused_id, "--url", stack.url])
    assert again.exit_code == 1 and again.stderr.strip() == (
        f"error: 409 job_finished: job {paused_id} is succeeded; only a queued or running job "
        "can be paused")
