"""Sweeps, in-process: what a submission refuses (422 naming the field), the driver's
decisions (TPE proposals within bounds, pruning a clearly worse trial, the best trial by
metric and direction), and cancel reaching every trial. The trials' jobs are moved here
as a worker would move them (lifecycle), with the eval points a worker would write."""

from typing import Any

import pytest

from tests.inprocess import client, make_app, make_key

LR = {"type": "loguniform", "low": 1e-4, "high": 3e-3}


def base(dataset_id: str, **hp: Any) -> dict[str, Any]:
    return {"type": "pretrain", "dataset_id": dataset_id,
            "model": {"architecture": "bert", "size": "tiny"},
            "tokenizer": {"vocab_size": 500},
            "hyperparameters": {"max_steps": 40, "batch_size": 8, "sequence_length": 32,
                                "warmup_steps": 2, **hp},
            "eval_every": 10}


def sweep(dataset_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "sweep", "base": base(dataset_id),
            "search_space": {"hyperparameters.learning_rate": LR}, "trials": 3,
            "parallel": 2, **fields}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweeps.db'}"
    return str(request.getfixturevalue("fresh_postgres"))


@pytest.fixture
def api(tmp_path, monkeypatch):
    yield from _api(tmp_path, monkeypatch)


@pytest.fixture
def api_on(tmp_path, monkeypatch, database):
    """The app on SQLite and on Postgres (the driver's conditional UPDATEs on both)."""
    yield from _api(tmp_path, monkeypatch, CLOZE_DATABASE_URL=database)


def _api(tmp_path, monkeypatch, **env: str):
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0", **env) as app:
        c = client(app)
        r = c.post("/v1/datasets", files={"file": ("t.txt", b"the cat sat on the mat.\n" * 50)})
        assert r.status_code == 201, r.text
        c.dataset_id = r.json()["id"]  # type: ignore[attr-defined]
        yield c


def _error(r) -> tuple[int, str | None, str]:
    body = r.json()["error"]
    return r.status_code, body["param"], body["message"]


@pytest.mark.parametrize("change, param, words", [
    # A bound outside the field's limits (learning_rate <= 1): refused now, not at trial 7.
    ({"search_space": {"hyperparameters.learning_rate": {**LR, "high": 2.0}}},
     "search_space.hyperparameters.learning_rate", "less than or equal to 1"),
    ({"search_space": {"hyperparameters.batch_size": {"type": "int", "low": 0, "high": 8}}},
     "search_space.hyperparameters.batch_size", "greater than or equal to 1"),
    # A float range for an int field: the schema takes no 12.5 for batch_size.
    ({"search_space": {"hyperparameters.batch_size": {"type": "uniform", "low": 4,
                                                      "high": 16}}},
     "search_space.hyperparameters.batch_size", "integer"),
    ({"search_space": {"hyperparameters.schedule": {"type": "categorical",
                                                    "choices": ["cosine", "sideways"]}}},
     "search_space.hyperparameters.schedule", "sideways"),
    ({"search_space": {"model.hidden_size": {"type": "int", "low": 64, "high": 128}}},
     "search_space.model.hidden_size", "only hyperparameters"),
    ({"search_space": {"hyperparameters.nope": LR}},
     "search_space.hyperparameters.nope", "no such hyperparameter"),
    ({"search_space": {"hyperparameters.learning_rate": {**LR, "low": 3e-3, "high": 1e-4}}},
     "search_space.hyperparameters.learning_rate", "less than high"),
    ({"search_space": {"hyperparameters.learning_rate": {**LR, "low": 0}}},
     "search_space.hyperparameters.learning_rate.loguniform.low", "greater than 0"),
    ({"search_space": {"hyperparameters.batch_size": {"type": "int", "low": 8, "high": 32,
                                                      "step": 8, "log": True}}},
     "search_space.hyperparameters.batch_size", "step 1"),
    ({"search_space": {}}, "search_space", "at least 1"),
    ({"trials": 101}, "trials", "less than or equal to 100"),
    ({"trials": 2, "parallel": 3}, "parallel", "exceeds trials"),
    ({"trials": 10, "parallel": 5}, "parallel", "jobs one owner may have"),
    ({"direction": "sideways"}, "direction", "minimize"),
    ({"base": {"dataset_id": "ds_nope", "model": {"size": "tiny"}}}, "dataset_id",
     "no dataset"),
    ({"base": {"dataset_id": "x", "hyperparameters": {"max_steps": 0}}},
     "base.hyperparameters.max_steps", "greater than or equal to 1"),
])
def test_submission_refuses_what_a_trial_could_not_run(api, change, param, words):
    r = api.post("/v1/sweeps", json={**sweep(api.dataset_id), **change})
    status, got_param, message = _error(r)
    assert (status, got_param) == (422, param), r.text
    assert words in message, message
    assert api.get("/v1/sweeps").json()["data"] == []  # nothing made
    assert api.get("/v1/jobs").json()["data"] == []


def test_a_rule_across_two_searched_fields_is_checked_with_every_range_at_one_end(api):
    r = api.post("/v1/sweeps", json=sweep(api.dataset_id, search_space={
        "hyperparameters.max_steps": {"type": "int", "low": 5, "high": 40},
        "hyperparameters.warmup_steps": {"type": "int", "low": 2, "high": 30}}))
    assert _error(r)[:2] == (422, "search_space"), r.text


# --- the driver's decisions, on the study rebuilt from trial records -------------------


def _spec(**fields: Any):
    from jobspec.sweep import SweepSpec

    return SweepSpec.model_validate({
        "base": {"dataset_id": "ds_x"}, "trials": 12, "parallel": 1, "search_space": {
            "hyperparameters.learning_rate": LR,
            "hyperparameters.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
            "hyperparameters.schedule": {"type": "categorical",
                                         "choices": ["linear", "cosine"]}}, **fields})


def _done(number: int, lr: float, evals: dict[int, float], status: str = "succeeded",
          **fields: Any):
    from service.domain.sweep_study import TrialRecord

    return TrialRecord(number=number, job_id=f"job_{number}", status=status,
                       params={"hyperparameters.learning_rate": lr,
                               "hyperparameters.batch_size": 16,
                               "hyperparameters.schedule": "linear"},
                       evals=evals, model_id=f"m_{number}" if status == "succeeded" else None,
                       **fields)


def test_tpe_proposes_within_bounds_reproducibly_and_not_the_same_point_twice():
    from service.domain.sweep_study import propose

    spec = _spec()
    trials: list = []
    seen = []
    for n in range(8):
        params = propose(spec, trials)
        assert params == propose(spec, trials)  # seeded: the same history, the same answer
        lr = params["hyperparameters.learning_rate"]
        assert 1e-4 <= lr <= 3e-3
        assert params["hyperparameters.batch_size"] in (8, 16, 24, 32)
        assert params["hyperparameters.schedule"] in ("linear", "cosine")
        seen.append(lr)
        # Each trial scores by its distance from 1e-3: TPE has something to model.
        trials.append(_done(n, lr, {10: 3.0, 20: 2.0 + abs(lr - 1e-3) * 100})
                      if n % 2 else _done(n, lr, {}, status="running"))
        trials[-1].params = params
    assert len(set(seen)) == len(seen)
    assert propose(_spec(seed=1), trials) != propose(spec, trials)


def test_a_clearly_worse_running_trial_is_pruned_and_a_good_one_is_not():
    from service.domain.sweep_study import to_prune

    spec = _spec()
    finished = [_done(0, 1e-3, {10: 3.0, 20: 2.5}), _done(1, 2e-3, {10: 3.2, 20: 2.6})]
    worse = _done(2, 1e-4, {10: 5.0}, status="running")
    better = _done(3, 5e-4, {10: 2.9}, status="running")
    assert [(t.number, step) for t, step in to_prune(spec, [*finished, worse, better])] == \
        [(2, 10)]
    # Not before startup_trials have finished, not before warmup_steps, not with no pruner.
    assert to_prune(_spec(pruner={"startup_trials": 3}), [*finished, worse]) == []
    assert to_prune(_spec(pruner={"warmup_steps": 20}), [*finished, worse]) == []
    assert to_prune(_spec(pruner=None), [*finished, worse]) == []


def test_the_best_trial_follows_the_metric_and_its_direction():
    from service.domain.sweep_study import best

    trials = [_done(0, 1e-3, {10: 0.5, 20: 0.7}), _done(1, 2e-3, {10: 0.9, 20: 0.6}),
              _done(2, 3e-3, {10: 0.1}, status="failed"),
              _done(3, 3e-4, {10: 0.3}, status="cancelled", pruned=True)]
    assert best(_spec(), trials).number == 1  # eval_loss: the last eval, minimized
    assert best(_spec(metric="accuracy"), trials).number == 0  # maximized
    assert best(_spec(direction="maximize"), trials).number == 0
    trials[0].keeps_best = True  # early stopping: its model is its best eval's (0.5)
    assert best(_spec(), trials).number == 0
    assert best(_spec(), trials[2:]) is None  # none succeeded


# --- the driver over the database: trials as jobs ------------------------------------


def _job(job_id: str):
    from service.db import session_scope
    from service.domain.tables import JobRow

    with session_scope() as s:
        row = s.get(JobRow, job_id)
        s.expunge(row)
        return row


def _run(job_id: str, evals: dict[int, float], end: str | None = None) -> None:
    """Move a trial's job as its worker would: claimed, eval points written, finished."""
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.lifecycle import JobStatus
    from service.domain.tables import JobRow, MetricRow

    with session_scope() as s:
        if s.get(JobRow, job_id).status == JobStatus.QUEUED.value:
            lifecycle.claim(s, job_id, max_attempts=3)
        for step, value in evals.items():
            s.add(MetricRow(job_id=job_id, step=step, eval_loss=value))
        if end == "succeeded":
            lifecycle.finish(s, job_id, JobStatus.SUCCEEDED, model_id=f"m_{job_id}")
        elif end == "cancelled":
            lifecycle.finish(s, job_id, JobStatus.CANCELLED)


def test_trials_run_k_at_a_time_the_laggard_is_pruned_and_the_best_model_published(api_on):
    from service import sweeper

    api = api_on

    r = api.post("/v1/sweeps", json=sweep(api.dataset_id, trials=3, parallel=2))
    assert r.status_code == 202, r.text
    swp = r.json()
    assert swp["status"] == "running" and swp["spec"]["direction"] == "minimize"
    first, second = swp["trials"]  # parallel 2: two trials started at once
    assert [t["status"] for t in swp["trials"]] == ["queued", "queued"]
    for t in swp["trials"]:
        lr = t["params"]["hyperparameters.learning_rate"]
        assert 1e-4 <= lr <= 3e-3
        assert _job(t["job_id"]).spec["hyperparameters"]["learning_rate"] == lr
        assert _job(t["job_id"]).enqueued_at is not None  # the reaper re-sends a lost one
    sweeper.step_all()
    assert len(api.get(f"/v1/sweeps/{swp['id']}").json()["trials"]) == 2  # still 2 at once

    _run(first["job_id"], {10: 3.0, 20: 2.0}, end="succeeded")
    sweeper.after_trial_event(first["job_id"])  # what the worker calls as the job ends
    swp = api.get(f"/v1/sweeps/{swp['id']}").json()
    assert len(swp["trials"]) == 3 and swp["trials_started"] == 3
    third = swp["trials"][2]

    _run(second["job_id"], {10: 6.0})  # far worse than trial 0 at step 10
    sweeper.after_trial_event(second["job_id"])  # what the worker calls at each eval
    assert _job(second["job_id"]).cancel_requested  # asked to stop, as a cancel asks
    events = api.get(f"/v1/jobs/{second['job_id']}/events").json()["data"]
    assert any(e["message"].startswith("pruned: eval_loss 6 at step 10") for e in events)
    _run(second["job_id"], {}, end="cancelled")  # the worker stops it at its next step

    _run(third["job_id"], {10: 2.9, 20: 2.4}, end="succeeded")
    sweeper.after_trial_event(third["job_id"])
    swp = api.get(f"/v1/sweeps/{swp['id']}").json()
    table = {t["number"]: t for t in swp["trials"]}
    assert [(t["status"], t["pruned"]) for t in table.values()] == [
        ("succeeded", False), ("cancelled", True), ("succeeded", False)]
    assert table[1]["pruned_step"] == 10 and table[1]["value"] is None
    assert (table[0]["value"], table[2]["value"], table[2]["best_metric"]) == (2.0, 2.4, 2.4)
    assert swp["status"] == "succeeded"
    assert (swp["best_job_id"], swp["best_value"], swp["model_id"]) == (
        first["job_id"], 2.0, f"m_{first['job_id']}")

    svg = api.get(f"/v1/sweeps/{swp['id']}/metrics.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    for n, points in ((0, 2), (1, 1), (2, 2)):
        assert f'<g id="trial-{n}" data-points="{points}">' in svg.text
    assert "#1 (pruned)" in svg.text


def test_no_trial_succeeding_fails_the_sweep(api):
    from service import sweeper

    body, key = sweep(api.dataset_id, trials=1, parallel=1), {"Idempotency-Key": "k1"}
    swp = api.post("/v1/sweeps", json=body, headers=key).json()
    again = api.post("/v1/sweeps", json=body, headers=key)  # a retry: the first sweep
    assert again.status_code == 202 and again.json()["id"] == swp["id"]
    assert len(api.get("/v1/sweeps").json()["data"]) == 1
    job_id = swp["trials"][0]["job_id"]
    _run(job_id, {10: 3.0}, end="cancelled")
    sweeper.after_trial_event(job_id)
    swp = api.get(f"/v1/sweeps/{swp['id']}").json()
    assert swp["status"] == "failed" and swp["model_id"] is None
    assert "no trial succeeded" in swp["error"]["message"]


def test_cancelling_a_sweep_cancels_its_trials(api):
    from service import sweeper

    swp = api.post("/v1/sweeps", json=sweep(api.dataset_id, trials=4, parallel=2)).json()
    running, queued = (t["job_id"] for t in swp["trials"])
    _run(running, {10: 3.0})
    r = api.post(f"/v1/sweeps/{swp['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert _job(queued).status == "cancelled"  # a queued trial never starts
    assert _job(running).status == "running" and _job(running).cancel_requested
    assert api.post(f"/v1/sweeps/{swp['id']}/cancel").json()["status"] == "cancelled"
    sweeper.step_all()  # a cancelled sweep starts nothing more
    assert api.get(f"/v1/sweeps/{swp['id']}").json()["trials_started"] == 2


def test_another_owners_sweep_is_not_found(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        bob = client(app, Authorization=f"Bearer {make_key('bob')}")
        ds = alice.post("/v1/datasets", files={"file": ("t.txt", b"a cat sat.\n" * 50)})
        swp = alice.post("/v1/sweeps", json=sweep(ds.json()["id"])).json()
        for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/metrics.svg")):
            r = bob.request(method, f"/v1/sweeps/{swp['id']}{path}")
            assert r.status_code == 404, (path, r.text)
        assert bob.get("/v1/sweeps").json()["data"] == []
        # Bob cannot sweep over Alice's dataset either.
        r = bob.post("/v1/sweeps", json=sweep(ds.json()["id"]))
        assert _error(r)[:2] == (422, "dataset_id")
        assert alice.get(f"/v1/sweeps/{swp['id']}").json()["status"] == "running"


def test_drivers_stepping_at_once_make_each_trial_once(api_on):
    """Every reaper and every trial's worker may step a sweep at the same moment: the
    conditional UPDATE of trials_started lets one of them make the next trial (and the
    unique (sweep_id, number) refuses a second; the test fails only without both)."""
    import threading

    from service import sweeper

    api = api_on
    swp = api.post("/v1/sweeps", json=sweep(api.dataset_id, trials=3, parallel=1)).json()
    _run(swp["trials"][0]["job_id"], {10: 3.0}, end="succeeded")
    start, made = threading.Barrier(4), []

    def step() -> None:
        start.wait()
        try:
            made.extend(sweeper.step_sweep(swp["id"]))
        except Exception:  # SQLite: a writer that lost the race may be refused outright
            pass

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    swp = api.get(f"/v1/sweeps/{swp['id']}").json()
    assert len(made) == 1 and swp["trials_started"] == 2
    assert [t["number"] for t in swp["trials"]] == [0, 1] and swp["trials"][1]["job_id"] == made[0]


def test_a_sweep_sent_to_the_jobs_route_is_told_where_to_go(api):
    r = api.post("/v1/jobs", json=sweep(api.dataset_id))
    assert _error(r)[:2] == (422, "type") and "POST /v1/sweeps" in _error(r)[2], r.text
