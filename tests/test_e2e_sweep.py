"""A sweep as a user runs it: three trials of a tiny masked-LM pretraining job over the
learning rate, two at a time, on a real Celery worker; the best trial's model becomes the
sweep's and answers fill-mask."""

import time

import pytest

from tests.stack import TERMINAL, Stack, corpus_slice
from tests.test_e2e_pretrain import TINY_JOB


def wait_sweep(stack: Stack, sweep_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = stack.client.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in TERMINAL:
            return sweep
        time.sleep(1)
    raise AssertionError(f"sweep {sweep_id} did not finish in {timeout}s\n{stack.logs()}")


@pytest.mark.slow
def test_a_sweep_publishes_its_best_trials_model(embedded_stack, data_dir):
    stack = embedded_stack
    ds = stack.upload("en.txt", corpus_slice(data_dir / "en-valid.txt.gz", 200_000)).json()
    base = {**TINY_JOB, "name": "tiny-sweep", "dataset_id": ds["id"],
            "hyperparameters": {**TINY_JOB["hyperparameters"], "max_steps": 40},
            "eval_every": 10, "checkpoint_every": 40}
    r = stack.client.post("/v1/sweeps", json={
        "type": "sweep", "base": base, "trials": 3, "parallel": 2, "seed": 7,
        "search_space": {"hyperparameters.learning_rate": {
            "type": "loguniform", "low": 1e-4, "high": 3e-3}}})
    assert r.status_code == 202, r.text
    sweep = wait_sweep(stack, r.json()["id"])
    assert sweep["status"] == "succeeded", (sweep, stack.logs())

    trials = sweep["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    rates = [t["params"]["hyperparameters.learning_rate"] for t in trials]
    assert all(1e-4 <= lr <= 3e-3 for lr in rates) and len(set(rates)) == 3
    for t in trials:
        job = stack.client.get(f"/v1/jobs/{t['job_id']}").json()
        assert job["spec"]["hyperparameters"]["learning_rate"] == \
            t["params"]["hyperparameters.learning_rate"]
        # Each trial ran to its end, or the pruner stopped it after an eval.
        assert (t["status"], t["pruned"]) in {("succeeded", False), ("cancelled", True)}, t
        if t["status"] == "succeeded":
            assert t["value"] == job["eval_loss"] and job["model_id"]
    finished = [t for t in trials if t["status"] == "succeeded"]
    winner = min(finished, key=lambda t: t["value"])
    assert sweep["best_job_id"] == winner["job_id"] and sweep["best_value"] == winner["value"]
    best_job = stack.client.get(f"/v1/jobs/{winner['job_id']}").json()
    assert sweep["model_id"] == best_job["model_id"]

    r = stack.client.post(f"/v1/models/{sweep['model_id']}/fill-mask",
                          json={"inputs": "the [MASK] of the lord."})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 5 and {"score", "token", "token_str", "sequence"} <= set(r.json()[0])

    svg = stack.client.get(f"/v1/sweeps/{sweep['id']}/metrics.svg").text
    assert all(f'id="trial-{n}"' in svg for n in range(3))
