"""API keys and ownership: another owner's ids answer 404 on every route (a test generated
from the app's route table, so new routes are covered automatically), lists show only your
own, an admin sees all; idempotent creates; rate limits; CORS allowlist."""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import CLOZE, ROOT, Stack, corpus_slice


def make_key(stack: Stack, owner: str, admin: bool = False) -> str:
    out = subprocess.run([*CLOZE, "keys", "create", "--owner", owner,
                          *(["--admin"] if admin else [])],
                         env=stack.env, cwd=ROOT, check=True, capture_output=True, text=True)
    secret = out.stdout.strip().splitlines()[-1]
    assert secret.startswith("cloze_sk_")
    return secret


def client(stack: Stack, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=stack.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("secured")
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    env.update({"CLOZE_REQUIRE_API_KEYS": "true", "CLOZE_RATE_LIMIT_PER_MINUTE": "100000",
                "CLOZE_CORS_ORIGINS": '["https://app.example.com"]'})
    stack = Stack(home, env, embedded=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def world(secured: Stack, data_dir: Path) -> dict:
    """Alice owns a dataset, a finished job with checkpoints, and a model."""
    keys = {who: make_key(secured, who) for who in ("alice", "bob")}
    keys["admin"] = make_key(secured, "ops", admin=True)
    alice = client(secured, keys["alice"])
    corpus = corpus_slice(data_dir / "en-valid.txt.gz", 150_000)
    ds = alice.post("/v1/datasets", files={"file": ("a.txt", corpus)}).json()
    job = alice.post("/v1/jobs", json={
        "dataset_id": ds["id"], "model": {"size": "tiny"}, "tokenizer": {"vocab_size": 500},
        "hyperparameters": {"max_steps": 4, "batch_size": 4, "sequence_length": 32,
                            "warmup_steps": 1}, "checkpoint_every": 2}).json()
    secured.client.headers["Authorization"] = f"Bearer {keys['alice']}"
    done = secured.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    sweep = alice.post("/v1/sweeps", json={
        "base": {"dataset_id": ds["id"], "model": {"size": "tiny"},
                 "tokenizer": {"vocab_size": 500},
                 "hyperparameters": {"max_steps": 4, "batch_size": 4, "sequence_length": 32,
                                     "warmup_steps": 1}},
        "search_space": {"hyperparameters.learning_rate": {
            "type": "loguniform", "low": 1e-4, "high": 1e-3}}, "trials": 1})
    assert sweep.status_code == 202, sweep.text
    assert alice.post(f"/v1/sweeps/{sweep.json()['id']}/cancel").status_code == 200
    return {"keys": keys, "dataset_id": ds["id"], "job_id": job["id"],
            "model_id": done["model_id"], "task": "fill-mask", "step": 4,
            "sweep_id": sweep.json()["id"]}


def routes() -> list[tuple[str, str]]:
    """(method, path) of every /v1 route, from the app's own OpenAPI route table."""
    from service.api.app import app

    return [(method.upper(), path) for path, ops in app.openapi()["paths"].items()
            if path.startswith("/v1/") for method in ops]


# A valid body for every POST with an id, so the answer is about the id, not the body.
INFERENCE = {"inputs": "the [MASK] of the"}


def test_other_owners_ids_are_404_on_every_route(secured, world):
    bob = client(secured, world["keys"]["bob"])
    alice = client(secured, world["keys"]["alice"])
    checked = 0
    for method, template in routes():
        params = re.findall(r"{(\w+)}", template)
        if not params:
            continue
        for name in params:
            assert name in world, f"no fixture id for {{{name}}} in {template}: add one"
        path = template.format(**{p: world[p] for p in params})
        if method == "DELETE":
            # deleting is checked last, below, so the other checks still have data
            continue
        body = INFERENCE if method == "POST" and "/models/" in template else None
        if template.endswith("/sentence-similarity"):
            body = {"inputs": {"source_sentence": "the lord", "sentences": ["the king"]}}
        if template.endswith("/question-answering"):
            body = {"inputs": {"question": "Who?", "context": "The lord."}}
        r = bob.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        ok = alice.request(method, path, json=body)
        # alice's model is a fill-mask model: the other task endpoints say so; her job has
        # finished: it can be neither paused nor resumed
        assert ok.status_code < 400 or ok.json()["error"]["code"] in (
            "wrong_task", "job_finished", "job_not_paused"), (method, path, ok.status_code,
                                                              ok.text)
        checked += 1
    assert checked >= 9
    # OpenAI's route names the model in its body: another owner's is as unknown
    embed = {"model": world["model_id"], "input": "the lord"}
    r = bob.post("/v1/embeddings", json=embed)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    assert alice.post("/v1/embeddings", json=embed).status_code == 200
    r = bob.delete(f"/v1/datasets/{world['dataset_id']}")
    assert r.status_code == 404
    assert alice.get(f"/v1/datasets/{world['dataset_id']}").status_code == 200
    assert bob.delete(f"/v1/models/{world['model_id']}").status_code == 404
    assert alice.get(f"/v1/models/{world['model_id']}").status_code == 200


def test_lists_show_only_your_own_and_admin_sees_all(secured, world):
    bob = client(secured, world["keys"]["bob"])
    admin = client(secured, world["keys"]["admin"])
    for kind, key in (("datasets", "dataset_id"), ("jobs", "job_id"), ("models", "model_id")):
        assert bob.get(f"/v1/{kind}").json()["data"] == []
        assert world[key] in [x["id"] for x in admin.get(f"/v1/{kind}").json()["data"]]
        assert admin.get(f"/v1/{kind}/{world[key]}").status_code == 200
    # bob cannot train on alice's dataset either
    r = bob.post("/v1/jobs", json={"dataset_id": world["dataset_id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"


def test_keys_are_required_and_checked(secured, world):
    assert httpx.get(f"{secured.url}/health").status_code == 200  # health stays public
    for headers in ({}, {"Authorization": "Bearer cloze_sk_made_up"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = httpx.get(f"{secured.url}/v1/jobs", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"


def test_hf_client_with_token(secured, world):
    from huggingface_hub import InferenceClient

    url = f"{secured.url}/v1/models/{world['model_id']}/fill-mask"
    answers = InferenceClient(model=url, token=world["keys"]["alice"]).fill_mask("the [MASK]")
    assert len(answers) == 5
    with pytest.raises(Exception):  # noqa: B017 - the client raises its own HTTP error type
        InferenceClient(model=url, token=world["keys"]["bob"]).fill_mask("the [MASK]")


def test_idempotency_key_on_creates(secured, world):
    alice = client(secured, world["keys"]["alice"])
    bob = client(secured, world["keys"]["bob"])
    h = {"Idempotency-Key": "upload-1"}
    first = alice.post("/v1/datasets", files={"file": ("i.txt", b"one\ntwo\n")}, headers=h)
    again = alice.post("/v1/datasets", files={"file": ("i.txt", b"one\ntwo\n")}, headers=h)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = alice.post("/v1/datasets", files={"file": ("i.txt", b"three\n")}, headers=h)
    assert other.status_code == 422 and other.json()["error"]["param"] == "Idempotency-Key"
    # keys are per owner: bob's same key is his own
    assert bob.post("/v1/datasets", files={"file": ("i.txt", b"x\n")}, headers=h).json()["id"] \
        != first.json()["id"]
    names = [d["id"] for d in alice.get("/v1/datasets?limit=100").json()["data"]]
    assert names.count(first.json()["id"]) == 1
    spec = {"dataset_id": first.json()["id"], "hyperparameters": {"max_steps": 1,
                                                                  "warmup_steps": 0}}
    j1 = alice.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
    j2 = alice.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
    assert j1.status_code == j2.status_code == 202 and j1.json()["id"] == j2.json()["id"]
    spec["hyperparameters"]["max_steps"] = 2
    j3 = alice.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
    assert j3.status_code == 422
    alice.post(f"/v1/jobs/{j1.json()['id']}/cancel")


def test_cors_allowlist(secured):
    allowed = httpx.options(f"{secured.url}/v1/jobs", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example.com"
    denied = httpx.options(f"{secured.url}/v1/jobs", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in denied.headers


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    from service.api.auth import RateLimiter

    limiter = RateLimiter(per_minute=3)
    assert [limiter.retry_after("k") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("k") >= 1
    assert limiter.retry_after("other") == 0
