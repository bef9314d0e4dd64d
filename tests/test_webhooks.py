"""Signed webhooks in this process: the signature, the refusal of URLs that reach private
addresses (at submission and again at delivery), a secret the API never shows, retries
with backoff, the order of a job's deliveries, and senders racing on Postgres."""

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.inprocess import client, make_app
from tests.webhook_receiver import Receiver, resolving

SECRET = "s3cret-s3cret-s3cret"
PRIVATE_URLS = ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/x",
                "http://[::1]:8080/hook", "http://[::ffff:127.0.0.1]/hook",
                "http://localhost/hook",
                # IPv6 forms that carry a non-public IPv4 address (issue 22, 14): IPv4-
                # compatible, NAT64, 6to4 and Teredo (client 192.0.2.45).
                "http://[::127.0.0.1]/hook", "http://[64:ff9b::7f00:1]/hook",
                "http://[64:ff9b::a9fe:a9fe]/latest", "http://[2002:7f00:1::1]/hook",
                "http://[2002:a00:1::1]/hook", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _submit(c, url: str, **extra: Any):
    ds = c.post("/v1/datasets", files={"file": ("c.txt", b"some words to train on\n" * 50)})
    assert ds.status_code == 201, ds.text
    return c.post("/v1/jobs", json={
        "dataset_id": ds.json()["id"], "model": {"size": "tiny"},
        "hyperparameters": {"max_steps": 10, "batch_size": 2, "sequence_length": 16},
        "webhook": {"url": url, "secret": SECRET}, **extra})


def _deliver_all() -> int:
    """Attempts made until none is due."""
    from service import webhook_sender

    made = 0
    while webhook_sender.deliver_next():
        made += 1
    return made


def _deliveries(job_id: str) -> list:
    from sqlalchemy import select

    from service.db import session_scope
    from service.domain.tables import WebhookDeliveryRow as D

    with session_scope() as s:
        rows = list(s.scalars(select(D).where(D.job_id == job_id).order_by(D.id)))
        s.expunge_all()
    return rows


def _make_due(job_id: str) -> None:
    """As if every pending retry's time had come."""
    from sqlalchemy import update

    from service.db import session_scope
    from service.domain.tables import WebhookDeliveryRow as D
    from service.domain.tables import utcnow

    with session_scope() as s:
        s.execute(update(D).where(D.job_id == job_id, D.state == "pending")
                  .values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def test_signature_is_hmac_sha256_of_the_timestamp_and_the_raw_body():
    from service.domain.webhooks import sign

    body = b'{"event":"job.queued"}'
    assert sign("key", 1700000000, body) == "sha256=" + hmac.new(
        b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("key", 1700000000, body) != sign("other", 1700000000, body)
    # A replayed body under a fresh timestamp does not verify.
    assert sign("key", 1700000000, body) != sign("key", 1700000001, body)


def test_each_status_change_is_delivered_signed_in_order(tmp_path, monkeypatch, receiver):
    with make_app(tmp_path, monkeypatch) as app:  # loopback-only: a local receiver is fine
        c = client(app)
        r = _submit(c, receiver.url)
        assert r.status_code == 202, r.text
        job = r.json()
        from service.db import session_scope
        from service.domain import lifecycle
        from service.domain.lifecycle import JobStatus

        with session_scope() as s:
            lifecycle.claim(s, job["id"], max_attempts=3)
        with session_scope() as s:
            lifecycle.finish(s, job["id"], JobStatus.SUCCEEDED)
        assert _deliver_all() == 3
        assert receiver.events() == ["job.queued", "job.running", "job.succeeded"]
        for headers, body in receiver.received:
            signed = headers["X-Cloze-Timestamp"].encode() + b"." + body
            expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            assert headers["X-Cloze-Signature"] == f"sha256={expected}"
            sent = json.loads(body)
            assert sent["id"] == job["id"] and sent["object"] == "job"
            assert headers["X-Cloze-Event"] == sent["event"] == f"job.{sent['status']}"
            assert headers["X-Cloze-Delivery"] == sent["delivery_id"]
            assert int(headers["X-Cloze-Timestamp"]) > 0
        assert len({h["X-Cloze-Delivery"] for h, _ in receiver.received}) == 3
        listed = c.get(f"/v1/jobs/{job['id']}/webhooks").json()
        assert [(d["event"], d["state"], d["attempts"], d["status_code"]) for d in
                listed["data"]] == [(f"job.{s}", "delivered", 1, 200)
                                    for s in ("queued", "running", "succeeded")]
        assert listed["data"][0]["next_attempt_at"] is None
        page = c.get(f"/v1/jobs/{job['id']}/webhooks",
                     params={"limit": 1, "after": listed["data"][0]["id"]}).json()
        assert [d["event"] for d in page["data"]] == ["job.running"] and page["has_more"]
        assert _deliver_all() == 0  # nothing is sent twice


def test_the_secret_is_never_shown(tmp_path, monkeypatch, receiver):
    with make_app(tmp_path, monkeypatch) as app:
        c = client(app)
        r = _submit(c, receiver.url)
        job = r.json()
        assert job["spec"]["webhook"] == {"url": receiver.url, "secret_set": True}
        again = _submit(c, receiver.url)  # a second job: its own deliveries
        keyed = [c.post("/v1/jobs", headers={"Idempotency-Key": "k1"}, json={
            **{k: v for k, v in job["spec"].items() if k != "webhook"},
            "webhook": {"url": receiver.url, "secret": SECRET}}) for _ in range(2)]
        _deliver_all()
        shown = [r.text, again.text, *(k.text for k in keyed),
                 c.get(f"/v1/jobs/{job['id']}").text, c.get("/v1/jobs").text,
                 c.get(f"/v1/jobs/{job['id']}/webhooks").text,
                 *(body.decode() for _, body in receiver.received)]
        assert keyed[1].json()["id"] == keyed[0].json()["id"]  # the replayed answer
        assert all(SECRET not in text for text in shown)
        assert len(receiver.received) == 3


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_addresses_are_refused_at_submission(tmp_path, monkeypatch, url):
    with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_ALLOW_PRIVATE="false") as app:
        r = _submit(client(app), url)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["param"] == "webhook.url" and "public address" in error["message"]


def test_a_name_resolving_to_a_private_address_is_refused(tmp_path, monkeypatch):
    resolving(monkeypatch, {"inside.example": "10.0.0.7", "meta.example": "169.254.169.254",
                            "six.example": "::1", "nat64.example": "64:ff9b::a9fe:a9fe",
                            "public.example": "93.184.215.14"})
    with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_ALLOW_PRIVATE="false") as app:
        c = client(app)
        for name in ("inside.example", "meta.example", "six.example", "nat64.example"):
            r = _submit(c, f"https://{name}/hook")
            assert r.status_code == 422, r.text
            assert "non-public" in r.json()["error"]["message"]
        r = _submit(c, "https://no-such-host.invalid/hook")
        assert r.status_code == 422 and "does not resolve" in r.json()["error"]["message"]
        dry = c.post("/v1/jobs", params={"dry_run": "true"}, json={
            "dataset_id": "ds_none", "webhook": {"url": "http://10.0.0.1/", "secret": SECRET}})
        assert dry.status_code == 422 and dry.json()["error"]["param"] == "webhook.url"
        assert _submit(c, "https://public.example/hook").status_code == 202


def test_private_addresses_are_allowed_by_the_setting(tmp_path, monkeypatch, receiver):
    with make_app(tmp_path, monkeypatch, CLOZE_HOST="0.0.0.0", CLOZE_REQUIRE_API_KEYS="false",
                  CLOZE_WEBHOOK_ALLOW_PRIVATE="true") as app:
        r = _submit(client(app), receiver.url)
        assert r.status_code == 202, r.text
        assert _deliver_all() == 1 and receiver.events() == ["job.queued"]


def test_ipv6_forms_are_as_public_as_the_ipv4_address_they_carry():
    from service.domain.webhooks import _is_global

    assert not any(_is_global(a) for a in (
        "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1", "2002:a9fe:a9fe::", "::",
        "64:ff9b:1::808:808", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "::ffff:10.0.0.1"))
    assert all(_is_global(a) for a in ("64:ff9b::808:808", "2002:808:808::1",
                                        "::ffff:8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"))


def test_the_private_address_default_follows_whether_keys_are_required():
    """Issue 22, 8: not the bind host. A keyed instance behind a local proxy listens on
    loopback, and its tenants must not reach 169.254.169.254 or 10.0.0.1 (nor scan
    ports by what the deliveries answer)."""
    from service.settings import Settings

    def private(**values: Any) -> bool:
        return Settings(_env_file=None, **values).webhook_private_addresses

    assert private()  # the embedded default: one person, their own machine
    assert not private(require_api_keys=True)
    assert not private(host="0.0.0.0")  # keyed: by default where it is not loopback
    assert not private(host="0.0.0.0", require_api_keys=False)  # open to a network
    assert private(require_api_keys=True, webhook_allow_private=True)
    assert not private(webhook_allow_private=False)


def test_a_keyed_instance_on_loopback_refuses_private_addresses(tmp_path, monkeypatch):
    from tests.inprocess import make_key

    urls = ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
            "http://127.0.0.1:6379/"]
    with make_app(tmp_path / "keyed", monkeypatch, CLOZE_REQUIRE_API_KEYS="true") as app:
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        for url in urls:
            r = _submit(alice, url)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["param"] == "webhook.url"
    with make_app(tmp_path / "allowed", monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_WEBHOOK_ALLOW_PRIVATE="true") as app:
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        assert _submit(alice, urls[1]).status_code == 202
    with make_app(tmp_path / "keyless", monkeypatch) as app:
        assert _submit(client(app), urls[1]).status_code == 202


def test_a_host_that_is_no_valid_name_is_a_422_whatever_the_policy(tmp_path, monkeypatch):
    """Issue 22, 10: `http://a..b/` (an empty label) was a 500, a UnicodeError from the
    IDNA codec; where private addresses are allowed it was accepted, never to be sent."""
    from tests.inprocess import make_key

    for name, env in (("keyed", {"CLOZE_REQUIRE_API_KEYS": "true"}), ("keyless", {})):
        with make_app(tmp_path / name, monkeypatch, **env) as app:
            c = client(app, Authorization=f"Bearer {make_key('alice')}")
            for url in ("http://a..b/", "https://x." + "y" * 64 + ".example/"):
                r = _submit(c, url)
                assert r.status_code == 422, (name, url, r.text)
                error = r.json()["error"]
                assert error["param"] == "webhook.url" and "not a valid name" in error["message"]


def test_an_unsendable_url_is_a_failed_attempt_not_a_stuck_delivery(tmp_path, monkeypatch):
    """A delivery whose URL cannot be sent (accepted before the check above) counts its
    attempts and ends; it is not claimed again and again as each lease runs out."""
    from service.db import session_scope
    from service.domain import lifecycle, webhooks

    with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_MAX_ATTEMPTS="2"):
        with session_scope() as s:
            s.add(lifecycle.new_job(id="job_bad", type="pretrain", name="t", dataset_id="ds_x",
                                    spec={"webhook": {"url": "http://a..b/", "secret": SECRET}}))
            s.flush()
            webhooks.record(s, "job_bad", private_ok=True)
        assert _deliver_all() == 1
        _make_due("job_bad")
        assert _deliver_all() == 1
        [d] = _deliveries("job_bad")
        assert (d.state, d.attempts) == ("exhausted", 2)
        assert d.error == "refused: the host is not a valid name"


def test_a_public_facing_service_refuses_private_addresses_by_default(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_HOST="0.0.0.0",
                  CLOZE_REQUIRE_API_KEYS="false") as app:
        assert _submit(client(app), "http://127.0.0.1:8000/hook").status_code == 422


def test_bad_webhooks_are_refused_naming_the_field(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch) as app:
        c = client(app)
        for url, secret, says in [("ftp://x.example/", SECRET, "http and https"),
                                  ("http://u:p@x.example/", SECRET, "credentials"),
                                  ("https://x.example/", "short", "at least 16")]:
            ds = c.post("/v1/datasets", files={"file": ("c.txt", b"a b c\n" * 10)}).json()
            r = c.post("/v1/jobs", json={"dataset_id": ds["id"],
                                         "webhook": {"url": url, "secret": secret}})
            assert r.status_code == 422, r.text
            assert says in r.json()["error"]["message"], r.text


def test_delivery_checks_the_address_again_and_connects_to_the_one_checked(
        tmp_path, monkeypatch, receiver):
    """DNS rebinding: the name resolved to a public address at submission; at delivery it
    answers a private one and is refused, even by a sender whose own settings would allow
    it (another process's, which knows nothing of this API's). And a delivery goes to the
    address it checked (not to a second lookup), with the name in Host."""
    from service.domain import webhooks
    from service.settings import get_settings

    port = receiver.server.server_address[1]
    resolving(monkeypatch, {"rebind.example": "93.184.215.14"})
    with make_app(tmp_path, monkeypatch, CLOZE_HOST="0.0.0.0", CLOZE_REQUIRE_API_KEYS="false"
                  ) as app:
        job = _submit(client(app), f"http://rebind.example:{port}/hook").json()
        monkeypatch.delenv("CLOZE_HOST")  # a sender on loopback, keyless: allows private
        get_settings.cache_clear()
        assert get_settings().webhook_private_addresses
        resolving(monkeypatch, {"rebind.example": "127.0.0.1"})
        assert _deliver_all() == 1 and receiver.received == []
        [delivery] = _deliveries(job["id"])
        assert delivery.state == "pending" and delivery.status_code is None
        assert "refused: rebind.example resolves to 127.0.0.1" in delivery.error

        # Treat loopback as public here: the name (unknown to real DNS) is looked up once
        # and the POST reaches the receiver through the address found.
        monkeypatch.setattr(webhooks, "_is_global", lambda address: True)
        _make_due(job["id"])
        assert _deliver_all() == 1
        [(headers, _)] = receiver.received
        assert headers["Host"] == f"rebind.example:{port}"
        assert _deliveries(job["id"])[0].state == "delivered"


def test_failed_attempts_are_retried_with_backoff_then_given_up(tmp_path, monkeypatch,
                                                                receiver):
    from service.domain.tables import utcnow
    from service.domain.webhooks import retry_delay_s
    from service.settings import get_settings

    with make_app(tmp_path, monkeypatch) as app:
        settings = get_settings()
        delays = [retry_delay_s(n, settings) for n in range(1, settings.webhook_max_attempts)]
        assert delays == [20, 40, 80, 160, 320]  # 6 attempts over ~10 minutes
        job = _submit(client(app), receiver.url).json()
        receiver.answers = [500, 302, 404, 503, 500, 500]
        errors, gaps = [], []
        for attempt in range(1, 7):
            before = utcnow()
            assert _deliver_all() == 1
            assert _deliver_all() == 0  # not due again before its delay
            [d] = _deliveries(job["id"])
            assert d.attempts == attempt
            errors.append(d.error)
            if attempt < 6:
                assert d.state == "pending"
                gaps.append((d.next_attempt_at.replace(tzinfo=None) -
                             before.replace(tzinfo=None)).total_seconds())
                _make_due(job["id"])
        assert d.state == "exhausted" and d.next_attempt_at is None and d.status_code == 500
        assert errors[:3] == ["HTTP 500", "HTTP 302: redirects are not followed", "HTTP 404"]
        assert all(0 <= gap - delay < 5 for gap, delay in zip(gaps, delays, strict=True))
        assert len(receiver.received) == 6
        assert _deliver_all() == 0


def test_a_slow_receiver_times_out(tmp_path, monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        port = listener.getsockname()[1]
        with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_TIMEOUT_S="0.5") as app:
            job = _submit(client(app), f"http://127.0.0.1:{port}/hook").json()
            assert _deliver_all() == 1
            [d] = _deliveries(job["id"])
            assert (d.state, d.error, d.status_code) == ("pending", "timed out after 0.5 s",
                                                         None)
    finally:
        listener.close()


def test_a_later_status_waits_for_the_earlier_delivery(tmp_path, monkeypatch, receiver):
    """While the queued event is failing and waiting for its retry, running is not sent
    ahead of it."""
    with make_app(tmp_path, monkeypatch) as app:
        job = _submit(client(app), receiver.url).json()
        from service.db import session_scope
        from service.domain import lifecycle

        receiver.answers = [500]
        assert _deliver_all() == 1
        with session_scope() as s:
            lifecycle.claim(s, job["id"], max_attempts=3)
        assert _deliver_all() == 0  # running waits behind queued's retry
        _make_due(job["id"])
        assert _deliver_all() == 2
        assert receiver.events() == ["job.queued", "job.queued", "job.running"]


def test_no_delivery_without_a_webhook(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch) as app:
        c = client(app)
        ds = c.post("/v1/datasets", files={"file": ("c.txt", b"a b c d\n" * 20)}).json()
        job = c.post("/v1/jobs", json={"dataset_id": ds["id"]}).json()
        assert job["spec"]["webhook"] is None
        assert _deliveries(job["id"]) == []
        assert c.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"] == []
        assert c.get("/v1/jobs/job_nope/webhooks").status_code == 404


def test_two_senders_racing_on_postgres_send_each_delivery_once(tmp_path, monkeypatch,
                                                               fresh_postgres, receiver):
    from service.db import session_scope
    from service.domain import lifecycle, webhooks
    from service.domain.ids import new_id

    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=fresh_postgres):
        spec = {"webhook": {"url": receiver.url, "secret": SECRET}}
        jobs = [new_id("job") for _ in range(12)]
        with session_scope() as s:
            for job_id in jobs:
                s.add(lifecycle.new_job(id=job_id, type="pretrain", name="t", spec=spec,
                                        dataset_id="ds_x"))
                s.flush()
                webhooks.record(s, job_id, private_ok=True)  # as the API does
        for job_id in jobs:  # a second delivery each: running, after queued
            with session_scope() as s:
                lifecycle.claim(s, job_id, max_attempts=3)
        start = threading.Barrier(4)
        made: list[int] = []

        def sender() -> None:
            start.wait()
            made.append(_deliver_all())

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sum(made) == 24, made
        ids = [h["X-Cloze-Delivery"] for h, _ in receiver.received]
        assert len(ids) == len(set(ids)) == 24
        for job_id in jobs:  # and each job's in order
            mine = [json.loads(b)["event"] for _, b in receiver.received
                    if json.loads(b)["id"] == job_id]
            assert mine == ["job.queued", "job.running"]
            assert all(d.state == "delivered" and d.attempts == 1
                       for d in _deliveries(job_id))


def test_the_secret_stays_out_of_checkpoints_and_model_cards():
    """The engine's fingerprint goes into every checkpoint and the exported model card."""
    from jobspec import parse_spec
    from jobspec.model_facts import run_fingerprint

    spec = parse_spec({"dataset_id": "ds_x",
                       "webhook": {"url": "https://hooks.example/x", "secret": SECRET}})
    assert "webhook" not in json.dumps(run_fingerprint(spec, data_key="key"))
    assert run_fingerprint(spec, data_key="key") == \
        run_fingerprint(parse_spec({"dataset_id": "ds_x"}), data_key="key")


def test_another_owners_deliveries_are_not_found(tmp_path, monkeypatch, receiver):
    from tests.inprocess import make_key

    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_WEBHOOK_ALLOW_PRIVATE="true") as app:
        alice = client(app, Authorization=f"Bearer {make_key('alice')}")
        bob = client(app, Authorization=f"Bearer {make_key('bob')}")
        job = _submit(alice, receiver.url).json()
        assert len(alice.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]) == 1
        r = bob.get(f"/v1/jobs/{job['id']}/webhooks")
        assert r.status_code == 404 and "queued" not in r.text


def test_an_address_that_refuses_the_connection_gives_way_to_the_next(tmp_path, monkeypatch,
                                                                       receiver):
    """localhost resolves to ::1 and 127.0.0.1; a receiver on 127.0.0.1 alone still gets
    its deliveries (the sender connects to the addresses it resolved, in order)."""
    from service.domain import webhooks

    with make_app(tmp_path, monkeypatch) as app:
        job = _submit(client(app), receiver.url.replace("127.0.0.1", "twice.example")).json()
        monkeypatch.setattr(webhooks, "resolve", lambda host, port: ["::1", "127.0.0.1"])
        assert _deliver_all() == 1 and receiver.events() == ["job.queued"]
        assert _deliveries(job["id"])[0].state == "delivered"
