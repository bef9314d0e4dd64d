"""GET /metrics on a keyed instance (issue 22, finding 15): it showed every tenant's running
job ids to anyone. Now the series labelled by job id are left out there unless the scrape
carries an admin key, and CLOZE_METRICS_KEY makes /metrics require a key of its own. The
whole app in this process (tests/inprocess.py), a running job recorded as workers record
them."""

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess import REMOTE, client, make_app, make_key
from tests.test_prometheus import add_job

PER_JOB = ("cloze_training_step", "cloze_training_tokens_per_second",
           "cloze_training_step_seconds", "cloze_training_device_memory_bytes")


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)
            for _ in family.samples}


def running_job() -> str:
    return add_job("running", step=120, tokens_per_second=5000.0, training_gauges={
        "step_seconds": 0.1, "device_memory_bytes": 1e9})


def admin_key() -> str:
    from service.db import session_scope
    from service.domain import keys

    with session_scope() as session:
        return keys.create(session=session, owner="ops", admin=True)[1]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_keyed_instance_shows_job_ids_to_admins_only(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        job_id = running_job()
        api = client(app)
        for headers in ({}, bearer(make_key("alice"))):  # nobody, or a tenant
            r = api.get("/metrics", headers=headers)
            assert r.status_code == 200, r.text
            assert job_id not in r.text and "job_id=" not in r.text
            got = families(r.text)
            assert "cloze_jobs" in got and "cloze_queue_depth" in got  # counts stay
            assert not got & set(PER_JOB), got
        full = api.get("/metrics", headers=bearer(admin_key()))
        assert full.status_code == 200 and f'job_id="{job_id}"' in full.text
        assert set(PER_JOB) <= families(full.text)
        bad = api.get("/metrics", headers=bearer("cloze_sk_made_up"))
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"


def test_the_keyless_default_shows_everything_on_loopback_only(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        job_id = running_job()
        local = client(app).get("/metrics")
        assert local.status_code == 200 and f'job_id="{job_id}"' in local.text
        # from another machine a key is required, so the job ids are left out
        remote = client(app, peer=REMOTE).get("/metrics")
        assert remote.status_code == 200 and job_id not in remote.text


def test_a_metrics_key_is_required_once_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret = "m3trics-0f-a-long-random-sort"
    with make_app(tmp_path, monkeypatch, CLOZE_METRICS_KEY=secret,
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        job_id = running_job()
        api = client(app)  # on loopback, keyless: the key is still required
        for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {secret}"},
                        bearer(make_key("alice"))):
            r = api.get("/metrics", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "CLOZE_METRICS_KEY" in r.json()["error"]["message"]
        for headers in (bearer(secret), bearer(admin_key())):
            r = api.get("/metrics", headers=headers)
            assert r.status_code == 200 and f'job_id="{job_id}"' in r.text
        assert api.get("/health").status_code == 200  # /health stays open
