"""One slow webhook receiver holds up nothing else (issue 22, 1): an attempt ends at its
wall-clock limit whatever the receiver does (dripping its head, dripping its body, a name
that resolves slowly), and the sender's pool keeps one host's and one owner's attempts to
their share, so another tenant's delivery goes out at once. The end-to-end probe, with a
real worker, is tests/test_e2e_webhook_isolation.py."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.inprocess import client, make_app, make_key
from tests.test_webhooks import SECRET, _deliver_all, _deliveries
from tests.webhook_receiver import Receiver, SlowReceiver, resolving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _submit(c: Any, url: str) -> str:
    ds = c.post("/v1/datasets", files={"file": ("c.txt", b"some words to train on\n" * 50)})
    assert ds.status_code == 201, ds.text
    r = c.post("/v1/jobs", json={
        "dataset_id": ds.json()["id"], "model": {"size": "tiny"},
        "hyperparameters": {"max_steps": 10, "batch_size": 2, "sequence_length": 16},
        "webhook": {"url": url, "secret": SECRET}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _timed_attempt() -> float:
    start = time.monotonic()
    assert _deliver_all() == 1
    return time.monotonic() - start


def test_a_receiver_dripping_its_head_is_cut_off_at_the_limit(tmp_path, monkeypatch):
    """Each byte comes well within a per-read timeout, so only a deadline for the whole
    attempt ends it; the claim's lease outlasts it, so nobody claims it again meanwhile."""
    from service.settings import get_settings
    from service.webhook_sender import lease_s

    slow = SlowReceiver("head", every=0.1)
    try:
        with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_TIMEOUT_S="1") as app:
            job = _submit(client(app), slow.url)
            took = _timed_attempt()
            assert 1 <= took < 1.5, took
            [d] = _deliveries(job)
            assert (d.state, d.attempts, d.error) == ("pending", 1, "timed out after 1 s")
            assert lease_s(get_settings()) > 2 * get_settings().webhook_timeout_s
    finally:
        slow.close()


def test_a_receiver_dripping_its_body_is_delivered_without_waiting_for_it(tmp_path,
                                                                          monkeypatch):
    """The audit's probe: 200 with Content-Length: 100, then a byte at a time. The status
    is the answer; the body is never read (it kept one attempt alive ~147 s)."""
    slow = SlowReceiver("body", every=0.2)
    try:
        with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_TIMEOUT_S="2") as app:
            job = _submit(client(app), slow.url)
            assert _timed_attempt() < 1
            [d] = _deliveries(job)
            assert (d.state, d.attempts, d.status_code) == ("delivered", 1, 200)
    finally:
        slow.close()


def test_a_slow_name_lookup_counts_toward_the_limit(tmp_path, monkeypatch, receiver):
    import socket

    resolving(monkeypatch, {"fast.example": "127.0.0.1"})
    looked_up = socket.getaddrinfo

    def slow_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.example":
            time.sleep(3)
        return looked_up(host, *args, **kwargs)

    with make_app(tmp_path, monkeypatch, CLOZE_WEBHOOK_TIMEOUT_S="0.5") as app:
        job = _submit(client(app), f"http://slow-dns.example:{receiver.port}/hook")
        monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
        assert _timed_attempt() < 1
        [d] = _deliveries(job)
        assert (d.state, d.error) == ("pending", "timed out after 0.5 s")


def _bob_waits(app: Any, receiver: Receiver, slow: SlowReceiver, alices_urls: list[str]
               ) -> float:
    """Alice's jobs' webhooks point at the slow receiver, then Bob's one at a fast one;
    with the sender running, how long Bob's delivery took to arrive."""
    import threading

    from service import webhook_sender
    from service.settings import get_settings

    alice = client(app, Authorization=f"Bearer {make_key('alice')}")
    bob = client(app, Authorization=f"Bearer {make_key('bob')}")
    for url in alices_urls:
        _submit(alice, url)
    _submit(bob, receiver.url.replace("127.0.0.1", "fast.example"))
    stop, sender = threading.Event(), webhook_sender.Sender(get_settings())
    thread = threading.Thread(target=sender.run, args=(stop,))
    thread.start()
    try:
        start = time.monotonic()
        while not receiver.received and time.monotonic() - start < 10:
            time.sleep(0.02)
        assert receiver.events() == ["job.queued"]
        return time.monotonic() - start
    finally:
        stop.set()
        sender.wake.set()
        thread.join(timeout=30)  # its attempts in flight end and are recorded here


def test_one_slow_host_holds_at_most_its_share_of_the_pool(tmp_path, monkeypatch, receiver):
    resolving(monkeypatch, {"slow.example": "127.0.0.1", "fast.example": "127.0.0.1"})
    slow = SlowReceiver("silent")
    try:
        with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                      CLOZE_WEBHOOK_ALLOW_PRIVATE="true", CLOZE_MAX_ACTIVE_JOBS="10",
                      CLOZE_WEBHOOK_TIMEOUT_S="3", CLOZE_WEBHOOK_POLL_INTERVAL_S="0.05",
                      CLOZE_WEBHOOK_CONCURRENCY="3", CLOZE_WEBHOOK_CONCURRENCY_PER_HOST="2",
                      CLOZE_WEBHOOK_CONCURRENCY_PER_OWNER="10") as app:
            url = slow.url.replace("127.0.0.1", "slow.example")
            waited = _bob_waits(app, receiver, slow, [url] * 4)
            assert waited < 1.5, waited  # Alice's first attempts run until 3 s
            assert slow.most_open == 2 and slow.requests == 2
    finally:
        slow.close()


def test_one_owners_slow_receivers_hold_at_most_their_share(tmp_path, monkeypatch, receiver):
    """Many names (wildcard DNS costs nothing) do not get one tenant more of the pool."""
    names = [f"slow{i}.example" for i in range(4)]
    resolving(monkeypatch, {**dict.fromkeys(names, "127.0.0.1"), "fast.example": "127.0.0.1"})
    slow = SlowReceiver("silent")
    try:
        with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                      CLOZE_WEBHOOK_ALLOW_PRIVATE="true", CLOZE_MAX_ACTIVE_JOBS="10",
                      CLOZE_WEBHOOK_TIMEOUT_S="3", CLOZE_WEBHOOK_POLL_INTERVAL_S="0.05",
                      CLOZE_WEBHOOK_CONCURRENCY="3", CLOZE_WEBHOOK_CONCURRENCY_PER_HOST="10",
                      CLOZE_WEBHOOK_CONCURRENCY_PER_OWNER="2") as app:
            urls = [slow.url.replace("127.0.0.1", name) for name in names]
            waited = _bob_waits(app, receiver, slow, urls)
            assert waited < 1.5, waited
            assert slow.most_open == 2 and slow.requests == 2
    finally:
        slow.close()
