"""The audit's probe of issue 22, 1, on real processes (`cloze api` + `cloze worker` on
Postgres and Redis): Alice's webhooks point at slow receivers, one dripping its answer's
body and one its head, a byte at a time. Meanwhile Bob's delivery goes out at once, his
job starts at once, /health counts a live worker throughout, and each of Alice's
deliveries is attempted once (no lease ran out under an attempt to claim it again).

Before, the worker's main process made attempts while holding its fork guard: a job's
start and the heartbeat waited minutes for a receiver, and so did Bob's delivery."""

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.stack import Stack, corpus_slice
from tests.test_auth import make_key
from tests.webhook_receiver import Receiver, SlowReceiver

SECRET = "e2e-webhook-secret-0123"


@pytest.fixture
def stack(tmp_path, fresh_postgres: str, redis_url: str) -> Iterator[Stack]:
    stack = Stack(tmp_path / "home", {
        "CLOZE_DATABASE_URL": fresh_postgres, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"train-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        # Keyed, on loopback: receivers on loopback need the explicit setting (finding 8).
        "CLOZE_REQUIRE_API_KEYS": "true", "CLOZE_WEBHOOK_ALLOW_PRIVATE": "true",
        "CLOZE_WEBHOOK_TIMEOUT_S": "2", "CLOZE_WEBHOOK_POLL_INTERVAL_S": "0.2",
        # A stalled heartbeat shows in /health within seconds, not 90.
        "CLOZE_HEARTBEAT_INTERVAL_S": "0.5", "CLOZE_HEARTBEAT_TIMEOUT_S": "4",
    }, embedded=False)
    yield stack
    stack.stop()


@pytest.mark.slow
def test_a_slow_receiver_holds_up_no_job_no_heartbeat_and_no_other_tenant(stack, data_dir):
    dripping = [SlowReceiver("body", every=0.5), SlowReceiver("head", every=0.5)]
    fast = Receiver()
    try:
        keys = {who: make_key(stack, who) for who in ("alice", "bob")}
        clients = {who: httpx.Client(base_url=stack.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"})
                   for who, key in keys.items()}
        corpus = corpus_slice(data_dir / "en-valid.txt.gz", 50_000)

        def status(job_id: str) -> str:
            return str(clients["bob"].get(f"/v1/jobs/{job_id}").json()["status"])

        def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, f"no {what}\n{stack.logs()}"
                time.sleep(0.1)

        def submit(who: str, url: str, **extra: object) -> str:
            c = clients[who]
            ds = c.post("/v1/datasets", files={"file": ("c.txt", corpus)})
            assert ds.status_code == 201, ds.text
            r = c.post("/v1/jobs", json={
                "dataset_id": ds.json()["id"], "model": {"size": "tiny"},
                "tokenizer": {"vocab_size": 1000},
                "hyperparameters": {"max_steps": 10_000, "batch_size": 4,
                                    "sequence_length": 32, "warmup_steps": 1},
                "webhook": {"url": url, "secret": SECRET}, **extra})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        wait_for(lambda: httpx.get(f"{stack.url}/health", timeout=10).json()["workers"]
                 .get("live") == 1, "live worker")

        # Bob's first job runs; Alice's jobs wait on the GPU queue, which no worker here
        # serves, and their deliveries go to the slow receivers.
        first = submit("bob", fast.url)
        wait_for(lambda: status(first) == "running", "Bob's first job running")
        alices = [submit("alice", receiver.url, resources={"device": "cuda"})
                  for receiver in dripping for _ in range(2)]
        wait_for(lambda: sum(r.requests for r in dripping) >= 2, "Alice's attempts")

        # While they are under way, Bob's first job ends (Celery forks a fresh pool process
        # for the next job) and he submits a second.
        assert clients["bob"].post(f"/v1/jobs/{first}/cancel").status_code == 200
        wait_for(lambda: status(first) == "cancelled", "Bob's first job cancelled")
        submitted = time.monotonic()
        second = submit("bob", fast.url)
        delivered = running = None
        health: list[tuple[float, dict]] = []
        while time.monotonic() - submitted < 30 and running is None:
            before = time.monotonic()
            answer = httpx.get(f"{stack.url}/health", timeout=10).json()
            health.append((round(time.monotonic() - before, 2), answer["workers"]))
            if delivered is None and second in fast.job_ids():
                delivered = time.monotonic() - submitted
            if status(second) == "running":
                running = time.monotonic() - submitted
            time.sleep(0.25)
        clients["bob"].post(f"/v1/jobs/{second}/cancel")
        stalled = [(seconds, w) for seconds, w in health
                   if seconds >= 2 or w["status"] != "ok" or w["live"] < 1]
        assert (delivered is not None and delivered < 3 and running is not None
                and running < 20 and not stalled), (delivered, running, stalled)

        # The body-dripping receiver answered 200: delivered, once. The head-dripping one
        # timed out at 2 s, once per delivery so far (its retry is 20 s away).
        time.sleep(5)
        for job_id, receiver in zip(alices, [r for r in dripping for _ in range(2)],
                                    strict=True):
            [queued] = clients["alice"].get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
            if receiver.mode == "body":
                assert (queued["state"], queued["attempts"], queued["status_code"]) == (
                    "delivered", 1, 200), queued
            else:
                assert (queued["state"], queued["attempts"], queued["error"]) == (
                    "pending", 1, "timed out after 2 s"), queued
    finally:
        fast.close()
        for receiver in dripping:
            receiver.close()
