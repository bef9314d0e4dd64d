"""Admission is one atomic step (issue 22, findings 5 and 13), against a real `cloze api`
process on Postgres, where the race was seen: 16 concurrent job submissions with
CLOZE_MAX_ACTIVE_JOBS=4 admit exactly 4 (15 were admitted), 12 concurrent sweeps exactly 4
(11 were), and a model's DELETE racing a job that names it as its base never both succeed
(both did in 4 of 6 rounds). No worker: the admitted jobs stay queued."""

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.limits_api import safetensors_bytes, tar_gz
from tests.stack import CLOZE, ROOT, free_port

MAX_ACTIVE = 4
TEXT = b"the cat sat on the mat and the dog lay by the door.\n" * 200


class Api:
    def __init__(self, home: Path, database: str, broker: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_DATABASE_URL": database,
               "CLOZE_BROKER_URL": broker, "CLOZE_TRAIN_QUEUE": f"t-{uuid.uuid4().hex[:8]}",
               "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
               "CLOZE_PORT": self.url.rsplit(":", 1)[1],
               "CLOZE_MAX_ACTIVE_JOBS": str(MAX_ACTIVE), "CLOZE_RATE_LIMIT_PER_MINUTE": "0",
               "PYTHONUNBUFFERED": "1"}
        subprocess.run([*CLOZE, "migrate"], env=env, check=True, cwd=ROOT,
                       capture_output=True)
        self.log = home / "api.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*CLOZE, "api"], env=env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.client.get("/v1/jobs").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"the API did not start\n{self.log.read_text()}")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def cancel_all(self) -> None:
        for job in self.client.get("/v1/jobs", params={"limit": 100}).json()["data"]:
            self.client.post(f"/v1/jobs/{job['id']}/cancel")
        for sweep in self.client.get("/v1/sweeps", params={"limit": 100}).json()["data"]:
            self.client.post(f"/v1/sweeps/{sweep['id']}/cancel")


@pytest.fixture
def api(tmp_path: Path, fresh_postgres: str, redis_url: str) -> Iterator[Api]:
    server = Api(tmp_path, fresh_postgres, redis_url)
    try:
        yield server
    finally:
        server.stop()


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls in threads released together; their answers in order."""
    barrier = threading.Barrier(len(calls))
    answers: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers


def job(dataset_id: str, **fields: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "model": {"architecture": "bert", "size": "tiny"},
            "tokenizer": {"vocab_size": 500},
            "hyperparameters": {"max_steps": 10, "batch_size": 4, "sequence_length": 32,
                                "warmup_steps": 1}, **fields}


def test_concurrent_submissions_admit_exactly_the_limit(api: Api):
    ds = api.client.post("/v1/datasets", files={"file": ("t.txt", TEXT)}).json()["id"]
    posts = [lambda c=httpx.Client(base_url=api.url, timeout=60): c.post(
        "/v1/jobs", json=job(ds)) for _ in range(16)]
    answers = at_once(posts)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * MAX_ACTIVE + [429] * (16 - MAX_ACTIVE), \
        [r.text for r in answers if r.status_code not in (202, 429)]
    refused = next(r for r in answers if r.status_code == 429).json()["error"]
    assert refused["code"] == "too_many_jobs" and "the limit is 4" in refused["message"]
    listed = api.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    assert len(listed) == MAX_ACTIVE

    # Sweeps go through the same admission: a sweep about to start its first trial holds
    # a place, so 12 at once admit as many as one after another would.
    api.cancel_all()
    sweep = {"type": "sweep", "base": job(ds), "trials": 2, "parallel": 1,
             "search_space": {"hyperparameters.learning_rate": {
                 "type": "loguniform", "low": 1e-4, "high": 1e-3}}}
    posts = [lambda c=httpx.Client(base_url=api.url, timeout=60): c.post(
        "/v1/sweeps", json=sweep) for _ in range(12)]
    answers = at_once(posts)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * MAX_ACTIVE + [429] * (12 - MAX_ACTIVE), \
        [r.text for r in answers if r.status_code not in (202, 429)]
    queued = [j for j in api.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
              if j["status"] == "queued"]
    assert len(queued) == MAX_ACTIVE  # each admitted sweep's first trial, and no more


def tiny_model() -> bytes:
    """A BertForMaskedLM archive small enough to import in milliseconds."""
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32,
              "num_hidden_layers": 0, "num_attention_heads": 2, "intermediate_size": 64,
              "vocab_size": 200, "max_position_embeddings": 64, "type_vocab_size": 2}
    weights = safetensors_bytes({"bert.embeddings.word_embeddings.weight":
                                 ("F32", [200, 32], os.urandom(200 * 32 * 4))})
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).to_str()
    return tar_gz({"m/config.json": json.dumps(config).encode(),
                   "m/model.safetensors": weights, "m/tokenizer.json": tokenizer.encode(),
                   "m/tokenizer_config.json": b'{"mask_token": "[MASK]"}'})


def test_deleting_a_model_and_a_job_on_it_never_both_succeed(api: Api):
    ds = api.client.post("/v1/datasets", files={"file": ("t.txt", TEXT)}).json()["id"]
    archive = tiny_model()
    both = []
    for _ in range(6):
        r = api.client.post("/v1/models/import", files={"file": ("m.tar.gz", archive)})
        assert r.status_code == 201, r.text
        model = r.json()["id"]
        deleter, submitter = (httpx.Client(base_url=api.url, timeout=60) for _ in range(2))
        gone, made = at_once([
            lambda c=deleter, m=model: c.delete(f"/v1/models/{m}"),
            lambda c=submitter, m=model: c.post("/v1/jobs", json={"dataset_id": ds,
                                                                   "base_model_id": m})])
        assert gone.status_code in (204, 409), gone.text
        assert made.status_code in (202, 422), made.text
        both.append((gone.status_code, made.status_code))
        if made.status_code == 202:  # it names the model: the delete was refused
            assert gone.status_code == 409 and "is read by job" in gone.text
            assert api.client.get(f"/v1/models/{model}").status_code == 200
            api.client.post(f"/v1/jobs/{made.json()['id']}/cancel")
            assert api.client.delete(f"/v1/models/{model}").status_code == 204
        else:  # the model went first: the job was refused, naming it
            assert gone.status_code == 204 and "base_model_id" in made.text
    assert (204, 202) not in both, both
