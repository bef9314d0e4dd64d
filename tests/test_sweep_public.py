"""A sweep is shown as a job is (issue 22, finding 7): its base's webhook secret never
leaves the API (POST, its replay, GET, the list, an admin's view, the trials' jobs; the
dashboard reads those same answers), and its base's webhook URL passes the same target
check as a job's (a loopback URL is 422 naming base.webhook.url, not 202)."""

from typing import Any

from tests.inprocess import client, make_app, make_key
from tests.test_sweeps import sweep

SECRET = "sweep-s3cret-sweep-s3cret"


def _with_hook(dataset_id: str, url: str, **fields: Any) -> dict[str, Any]:
    body = sweep(dataset_id, trials=2, parallel=1, **fields)
    body["base"]["webhook"] = {"url": url, "secret": SECRET}
    return body


def _dataset(c) -> str:
    r = c.post("/v1/datasets", files={"file": ("t.txt", b"the cat sat on the mat.\n" * 50)})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_sweeps_webhook_secret_is_never_shown(tmp_path, monkeypatch):
    # Keys required, so an admin's view is one of the views checked. Private webhook
    # addresses allowed: what is checked here is what is shown, not where it points.
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_WEBHOOK_ALLOW_PRIVATE="true", CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        from service.db import session_scope
        from service.domain import keys

        with session_scope() as s:
            admin_key = keys.create(session=s, owner="root", admin=True)[1]
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        admin = client(app, Authorization=f"Bearer {admin_key}")
        body = _with_hook(_dataset(alice), "http://127.0.0.1:9/hook")
        created = [alice.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "s1"})
                   for _ in range(2)]  # the second is the first's answer, replayed
        assert [r.status_code for r in created] == [202, 202], created[0].text
        sweep_id = created[0].json()["id"]
        assert created[1].json()["id"] == sweep_id
        shown = created[0].json()
        assert shown["spec"]["base"]["webhook"] == {"url": "http://127.0.0.1:9/hook",
                                                   "secret_set": True}
        trial = shown["trials"][0]["job_id"]
        texts = [*(r.text for r in created),
                 alice.get(f"/v1/sweeps/{sweep_id}").text, alice.get("/v1/sweeps").text,
                 admin.get(f"/v1/sweeps/{sweep_id}").text, admin.get("/v1/sweeps").text,
                 alice.post(f"/v1/sweeps/{sweep_id}/cancel").text,
                 alice.get(f"/v1/jobs/{trial}").text, admin.get("/v1/jobs").text]
        assert all(SECRET not in text for text in texts), [t for t in texts if SECRET in t]
        # Kept where it is needed: the trials' deliveries are signed with it.
        from service.domain.tables import JobRow

        with session_scope() as s:
            assert s.get(JobRow, trial).spec["webhook"]["secret"] == SECRET


def test_a_sweeps_base_webhook_is_checked_as_a_jobs_is(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_ALLOW_PRIVATE="false",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        c = client(app)
        dataset_id = _dataset(c)
        for url in ("http://127.0.0.1:9/hook", "http://[::1]/hook", "http://localhost/x"):
            job = c.post("/v1/jobs", json={**_with_hook(dataset_id, url)["base"]})
            r = c.post("/v1/sweeps", json=_with_hook(dataset_id, url))
            assert (job.status_code, r.status_code) == (422, 422), r.text
            error = r.json()["error"]
            assert error["param"] == "base.webhook.url", error
            assert error["message"] == "base." + job.json()["error"]["message"]
        assert c.get("/v1/sweeps").json()["data"] == []  # nothing made
        assert c.get("/v1/jobs").json()["data"] == []
