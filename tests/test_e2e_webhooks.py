"""A job's status changes reach its webhook as a user would see them: a real worker trains
a small job on Postgres + Redis, and an HTTP server in this test receives queued, running,
succeeded, in that order, each signed with the job's secret."""

import hashlib
import hmac
import json
import time

import pytest

from tests.stack import Stack, corpus_slice
from tests.webhook_receiver import Receiver

SECRET = "e2e-webhook-secret-0123"


@pytest.mark.slow
def test_status_changes_are_posted_signed_in_order(pg_redis_stack: Stack, data_dir):
    stack, receiver = pg_redis_stack, Receiver()
    try:
        ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 50_000)).json()
        r = stack.client.post("/v1/jobs", json={
            "dataset_id": ds["id"], "model": {"size": "tiny"},
            "tokenizer": {"vocab_size": 1000},
            "hyperparameters": {"max_steps": 10, "batch_size": 4, "sequence_length": 32,
                                "warmup_steps": 1},
            "log_every": 5, "eval_every": 10, "checkpoint_every": 10,
            "webhook": {"url": receiver.url, "secret": SECRET}})
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["id"], timeout=300)
        assert job["status"] == "succeeded", (job, stack.logs())
        assert job["spec"]["webhook"] == {"url": receiver.url, "secret_set": True}

        deadline = time.monotonic() + 60  # senders poll every 2 s
        while len(receiver.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert receiver.events() == ["job.queued", "job.running", "job.succeeded"], \
            (receiver.events(), stack.logs())
        for headers, body in receiver.received:
            signed = headers["X-Cloze-Timestamp"].encode() + b"." + body
            mac = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Cloze-Signature"], f"sha256={mac}")
            assert abs(time.time() - int(headers["X-Cloze-Timestamp"])) < 300
            sent = json.loads(body)
            assert sent["id"] == job["id"] and sent["event"] == f"job.{sent['status']}"
            assert SECRET not in body.decode()
        final = json.loads(receiver.received[-1][1])
        assert final["model_id"] == job["model_id"] and final["progress"]["step"] == 10

        listed = stack.client.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]
        assert [(d["event"], d["state"], d["status_code"]) for d in listed] == [
            ("job.queued", "delivered", 200), ("job.running", "delivered", 200),
            ("job.succeeded", "delivered", 200)]
    finally:
        receiver.close()
