"""POST /v1/jobs?dry_run=true: the checks of a submission, then what the job would do
(tokens, blocks, steps, epochs, parameters, memory, time), with nothing made. In-process:
the real app on SQLite; the jobs compared with it run in this process, as a worker runs
them (workers.runner.run_job)."""

import gzip
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.inference_helpers import clear_caches

DATA = Path(__file__).resolve().parent / "data"
# A time estimate made from measured throughput is within this factor of the time the
# same-sized job then trains for (evals, checkpoints and a loaded CPU vary run to run).
TIME_FACTOR = 3.0
# Tokens estimated from a sample of text not tokenized yet, against the worker's count.
TOKENS_FACTOR = 1.5


@pytest.fixture(scope="module")
def app_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The service's settings pointed at a fresh home with a SQLite database."""
    home = tmp_path_factory.mktemp("dry-run")
    patch = pytest.MonkeyPatch()
    for name in ("CLOZE_DATABASE_URL", "CLOZE_STORAGE_URL", "CLOZE_BROKER_URL",
                 "CLOZE_REQUIRE_API_KEYS", "CLOZE_MAX_ACTIVE_JOBS"):
        patch.delenv(name, raising=False)
    patch.setenv("CLOZE_HOME", str(home))
    patch.setenv("CLOZE_RATE_LIMIT_PER_MINUTE", "0")
    clear_caches()
    from service.db import get_engine
    from service.domain.tables import Base

    Base.metadata.create_all(get_engine())
    yield home
    get_engine().dispose()
    patch.undo()
    clear_caches()


@pytest.fixture(scope="module")
def client(app_env: Path) -> TestClient:
    from service.api.app import create_app

    # No lifespan: no reaper re-sending queued jobs while a test counts queue messages.
    return TestClient(create_app(), base_url="http://127.0.0.1:8000",
                      client=("127.0.0.1", 50000), raise_server_exceptions=False)


def english(size: int) -> bytes:
    with gzip.open(DATA / "en-valid.txt.gz", "rb") as f:
        data = f.read(size)
    return data[: data.rfind(b"\n") + 1]


@pytest.fixture(scope="module")
def corpus(client: TestClient) -> str:
    r = client.post("/v1/datasets", files={"file": ("prose.txt", english(150_000))})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def labelled(client: TestClient) -> str:
    with gzip.open(DATA / "spamassassin-sample.jsonl.gz", "rb") as f:
        lines = [line for line in f.read().splitlines() if b'"split": "train"' in line][:240]
    r = client.post("/v1/datasets", files={"file": ("spam.jsonl", b"\n".join(lines) + b"\n")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def tiny(dataset_id: str, **hyperparameters: Any) -> dict[str, Any]:
    hp = {"max_steps": 30, "batch_size": 16, "sequence_length": 64, "learning_rate": 1e-3,
          "warmup_steps": 3, **hyperparameters}
    return {"dataset_id": dataset_id, "model": {"architecture": "bert", "size": "tiny"},
            "tokenizer": {"vocab_size": 1000}, "hyperparameters": hp,
            "log_every": 10, "eval_every": 15, "checkpoint_every": 30}


def dry(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", params={"dry_run": "true"}, json=spec)
    assert r.status_code == 200, r.text
    return dict(r.json())


def queued_messages(home: Path) -> int:
    """Messages in the filesystem broker's queue folder (settings.broker_dir)."""
    from service.settings import get_settings

    folder = get_settings().broker_dir / "queue"
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.exists() else 0


def job_count() -> int:
    from service.db import session_scope
    from service.domain.tables import JobRow

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(JobRow)) or 0


def run(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit, then run the job here as a worker would; the finished job."""
    from workers.runner import run_job

    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    run_job(r.json()["id"])
    job = client.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "succeeded", (job, events(client, job["id"]))
    return dict(job)


def events(client: TestClient, job_id: str) -> list[str]:
    return [e["message"] for e in client.get(f"/v1/jobs/{job_id}/events",
                                             params={"limit": 1000}).json()["data"]]


def event_number(messages: list[str], pattern: str) -> float:
    found = [m for m in (re.search(pattern, msg) for msg in messages) if m]
    assert found, (pattern, messages)
    return float(found[0].group(1).replace(",", ""))


# ---- nothing is made ------------------------------------------------------------------


def test_a_dry_run_makes_nothing(client: TestClient, app_env: Path, corpus: str):
    from service.db import session_scope
    from service.domain import quotas
    from service.domain.tables import LOCAL_OWNER

    with session_scope() as s:
        used = quotas.used_bytes(s, LOCAL_OWNER)
    jobs, messages = job_count(), queued_messages(app_env)
    # More dry runs than the active-job limit (4): none counts as a job.
    for _ in range(6):
        found = dry(client, tiny(corpus))
        assert found["object"] == "job_estimate" and found["dry_run"] is True
    r = client.post("/v1/jobs", params={"dry_run": "true"}, json=tiny(corpus),
                    headers={"Idempotency-Key": "same-key"})
    assert r.status_code == 200
    assert job_count() == jobs and queued_messages(app_env) == messages
    assert client.get("/v1/jobs").json()["data"] == []
    with session_scope() as s:
        assert quotas.used_bytes(s, LOCAL_OWNER) == used
    # The key was not remembered: a real submission with it (and another body) is a job.
    r = client.post("/v1/jobs", json=tiny(corpus, max_steps=31),
                    headers={"Idempotency-Key": "same-key"})
    assert r.status_code == 202, r.text
    assert job_count() == jobs + 1 and queued_messages(app_env) == messages + 1
    client.post(f"/v1/jobs/{r.json()['id']}/cancel")


BAD = [
    ({"hyperparameters": {"batch_size": 0}}, 422),
    ({"model": {"architecture": "bert", "size": "huge"}}, 422),
    ({"objective": "clm"}, 422),  # clm trains gpt2 or llama
    ({"tokenizer": {"type": "bpe"}}, 422),  # bert uses wordpiece
    ({"hyperparameters": {"max_steps": 10, "warmup_steps": 20}}, 422),
    ({"dataset_id": "ds_nope"}, 422),
    ({"base_model_id": "m_nope", "model": None}, 422),
    ({"unknown_field": 1}, 422),
]


@pytest.mark.parametrize(("change", "status"), BAD)
def test_a_dry_run_refuses_what_a_submission_refuses(client: TestClient, corpus: str,
                                                     change: dict[str, Any], status: int):
    spec = {**tiny(corpus), **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    before = job_count()
    real = client.post("/v1/jobs", json=spec)
    trial = client.post("/v1/jobs", params={"dry_run": "true"}, json=spec)
    assert real.status_code == trial.status_code == status, (real.text, trial.text)
    assert trial.json() == real.json() and "error" in trial.json()
    assert job_count() == before


def test_a_dry_run_refuses_wrong_datasets_and_models(client: TestClient, corpus: str):
    with gzip.open(DATA / "brown-valid.conll.gz", "rb") as f:
        conll = f.read(6000)
    tagged = client.post("/v1/datasets", files={"file": ("t.conll", conll[:conll.rfind(
        b"\n\n") + 2])}).json()["id"]
    for spec in ({"dataset_id": tagged, "model": {"architecture": "gpt2"}},
                 {"type": "finetune", "task": "text_classification", "dataset_id": corpus,
                  "base_model_id": "m_missing"},
                 {"type": "finetune", "task": "token_classification", "dataset_id": tagged,
                  "base_model_id": "m_missing"}):
        before = job_count()
        real = client.post("/v1/jobs", json=spec)
        trial = client.post("/v1/jobs", params={"dry_run": "true"}, json=spec)
        assert real.status_code == trial.status_code == 422, (real.text, trial.text)
        assert trial.json() == real.json()
        assert job_count() == before


def test_a_dry_run_is_refused_past_the_active_job_limit(client: TestClient, corpus: str):
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.tables import LOCAL_OWNER

    made = []
    with session_scope() as s:
        free = 4 - lifecycle.count_active(s, LOCAL_OWNER)
    for _ in range(free):
        r = client.post("/v1/jobs", json=tiny(corpus))
        assert r.status_code == 202
        made.append(r.json()["id"])
    real = client.post("/v1/jobs", json=tiny(corpus))
    trial = client.post("/v1/jobs", params={"dry_run": "true"}, json=tiny(corpus))
    assert real.status_code == trial.status_code == 429
    assert trial.json() == real.json()
    for job_id in made:
        client.post(f"/v1/jobs/{job_id}/cancel")


# ---- the figures, against what the job then does ---------------------------------------


def test_parameters_count_every_architecture_exactly():
    """The formula against transformers' own models, built on the meta device."""
    import torch

    from jobspec import PretrainSpec
    from jobspec.sizing import pretrain_parameters
    from workers.engine.architectures import MODEL_CLASSES, model_config

    class Vocab:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self) -> int:
            return 777

    shapes = [{"size": "tiny"}, {"size": "mini"},
              {"hidden_size": 96, "num_layers": 3, "num_heads": 3, "intermediate_size": 200,
               "max_position_embeddings": 64},
              # each architecture's other choice (untied for the masked LMs by default)
              {"size": "tiny", "tie_embeddings": True}, {"size": "tiny", "tie_embeddings": False}]
    for (arch, objective), cls in MODEL_CLASSES.items():
        for shape in shapes + ([{"size": "tiny", "num_key_value_heads": 1}]
                               if arch == "llama" else []):
            spec = PretrainSpec.model_validate({
                "dataset_id": "ds", "objective": objective,
                "model": {"architecture": arch, **shape},
                "hyperparameters": {"sequence_length": 32}})
            with torch.device("meta"):
                model = cls(model_config(spec.model, Vocab(), 0.0))  # type: ignore[arg-type]
            built = sum(p.numel() for p in model.parameters())
            assert pretrain_parameters(spec, 777) == built, (arch, objective, shape)


@pytest.fixture(scope="module")
def pretrained(client: TestClient, corpus: str) -> dict[str, Any]:
    """A dry run, then the tiny job it describes, run to the end."""
    before = dry(client, tiny(corpus))
    return {"before": before, "job": run(client, tiny(corpus))}


def test_a_pretraining_dry_run_matches_the_job_and_calibrates(client: TestClient,
                                                              corpus: str, pretrained):
    before, job = pretrained["before"], pretrained["job"]
    assert before["type"] == "pretrain" and before["steps"] == 30
    data = before["data"]
    assert data["source"] == "estimated" and data["documents"] > 0
    assert before["time"]["source"] == "default" and before["time"]["worker_kind"] is None
    assert before["memory_bytes"] > before["parameters"] * 16

    said = events(client, job["id"])
    model = client.get(f"/v1/models/{job['model_id']}").json()
    # Exactly what the job did: steps, parameters (the tokenizer filled its vocabulary).
    assert job["progress"]["step"] == job["progress"]["total_steps"] == before["steps"]
    assert model["details"]["num_parameters"] == before["parameters"]
    corpus_info = model["details"]["corpus"]
    assert 1 / TOKENS_FACTOR <= data["tokens"] / corpus_info["tokens"] <= TOKENS_FACTOR
    epochs = event_number(said, r"cover ([\d.]+) epochs")
    assert 1 / TOKENS_FACTOR <= before["epochs"] / epochs <= TOKENS_FACTOR
    trained_s = event_number(said, r"finished in ([\d.]+) s")
    print("default estimate", before["time"], "trained", trained_s)
    # The default errs long.
    assert before["time"]["seconds"] >= trained_s

    # Now tokenized: the data figures are the worker's own, and the time is measured.
    after = dry(client, tiny(corpus))
    assert after["data"]["source"] == "tokenized"
    assert after["data"]["tokens"] == corpus_info["tokens"]
    assert after["data"]["train_blocks"] == corpus_info["train_blocks"]
    assert round(after["epochs"], 2) == epochs
    assert after["parameters"] == before["parameters"]
    assert after["time"]["source"] == "measured" and after["time"]["worker_kind"]
    assert before["time"]["setup_seconds"] is None  # the default's fixed allowance
    assert after["time"]["setup_seconds"] > 0  # tokenizer training, tokenizing, publishing

    # A second job of the same size (another seed) takes about the estimated time, and
    # shows the estimate as its eta from the moment it starts.
    spec = tiny(corpus, seed=1)
    estimate = dry(client, spec)["time"]
    r = client.post("/v1/jobs", json=spec)
    job_id = r.json()["id"]
    from service.db import session_scope
    from service.domain import lifecycle

    with session_scope() as s:
        assert lifecycle.claim(s, job_id, max_attempts=3) is lifecycle.Claim.CLAIMED
    started = client.get(f"/v1/jobs/{job_id}").json()
    assert started["status"] == "running"
    assert started["progress"]["eta_seconds"] == estimate["seconds"]
    with session_scope() as s:  # back to queued, so run_job claims it as a worker does
        lifecycle.requeue(s, job_id)
    from workers.runner import run_job

    run_job(job_id)
    second = events(client, job_id)
    took = event_number(second, r"finished in ([\d.]+) s")
    print("measured estimate", estimate, "took", took)
    assert 1 / TIME_FACTOR <= estimate["seconds"] / took <= TIME_FACTOR, (estimate, took)
    rows = throughput_rows()
    assert len(rows) == 1 and rows[0]["jobs"] == 2 and rows[0]["objective"] == "mlm"
    assert rows[0]["parameters"] == before["parameters"]


def throughput_rows() -> list[dict[str, Any]]:
    from service.db import session_scope
    from service.domain.tables import ThroughputRow

    with session_scope() as s:
        return [{"jobs": r.jobs, "objective": r.objective, "parameters": r.parameters,
                 "tokens_per_second": r.tokens_per_second}
                for r in s.scalars(select(ThroughputRow)).all()]


def test_a_finetuning_dry_run_matches_the_job(client: TestClient, pretrained, labelled: str):
    base = pretrained["job"]["model_id"]
    spec = {"type": "finetune", "task": "text_classification", "base_model_id": base,
            "dataset_id": labelled, "hyperparameters": {"epochs": 1, "batch_size": 16,
                                                        "sequence_length": 64}}
    before = dry(client, spec)
    data = before["data"]
    # 240 records, 10% held out for validation (validation_fraction's default).
    assert data["source"] == "records" and data["labels"] == 2
    assert (data["train_examples"], data["validation_examples"]) == (216, 24)
    assert before["steps"] == 14 and before["epochs"] == round(14 * 16 / 216, 4)
    assert before["time"]["source"] == "default"
    # Weights, gradients and AdamW moments at least, more for a longer micro-batch.
    assert before["memory_bytes"] > before["parameters"] * 16
    longer = dry(client, {**spec, "hyperparameters": {**spec["hyperparameters"],
                                                      "sequence_length": 128}})
    assert longer["memory_bytes"] > before["memory_bytes"]
    auto = dry(client, {**spec, "hyperparameters": {"batch_size": 16}})
    assert auto["steps"] == 150  # "auto": 3 epochs, at least 150 steps

    job = run(client, spec)
    said = events(client, job["id"])
    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert job["progress"]["step"] == job["progress"]["total_steps"] == before["steps"]
    assert model["details"]["num_parameters"] == before["parameters"]
    assert event_number(said, r"of (\d+) training examples") == data["train_examples"]
    assert event_number(said, r"; (\d+) validation examples") == data["validation_examples"]
    assert event_number(said, r"examples: ([\d.]+) epochs") == round(before["epochs"], 2)
    after = dry(client, spec)
    assert after["time"]["source"] == "measured"
    assert {r["objective"] for r in throughput_rows()} >= {"mlm", "text_classification"}
    # A job this short spends much of its time outside the training loop (loading the
    # base model, reading the records, publishing): the estimate counts that as measured.
    wall = (datetime.fromisoformat(job["finished_at"])
            - datetime.fromisoformat(job["started_at"])).total_seconds()
    trained = event_number(said, r"finished in ([\d.]+) s")
    time = after["time"]
    assert 0 < time["setup_seconds"] < wall
    assert time["seconds"] == pytest.approx(
        time["setup_seconds"] + time["tokens"] / time["tokens_per_second"], abs=0.2)
    print("fine-tune estimate", time, "wall", wall, "trained", trained)
    assert 1 / TIME_FACTOR <= time["seconds"] / wall <= TIME_FACTOR, (time, wall)


def test_record_splits_decide_the_examples(client: TestClient, pretrained):
    with gzip.open(DATA / "spamassassin-sample.jsonl.gz", "rb") as f:
        lines = f.read().splitlines()[:300]
    counts = {split: sum(f'"split": "{split}"'.encode() in line for line in lines)
              for split in ("train", "valid", "test")}
    ds = client.post("/v1/datasets", files={"file": ("s.jsonl", b"\n".join(lines))}).json()
    found = dry(client, {"type": "finetune", "task": "text_classification",
                         "base_model_id": pretrained["job"]["model_id"], "dataset_id": ds["id"],
                         "hyperparameters": {"max_steps": 7}})
    assert found["steps"] == 7
    assert found["data"]["train_examples"] == counts["train"]
    assert found["data"]["validation_examples"] == counts["valid"]


@pytest.mark.parametrize(("name", "kind", "vocab", "architecture"), [
    ("en-valid.txt.gz", "wordpiece", 1000, "bert"), ("en-valid.txt.gz", "bpe", 8192, "gpt2"),
    ("en-pretrain.txt.gz", "unigram", 2000, "llama"),
    ("zh-reviews.txt.gz", "wordpiece", 2000, "bert"), ("zh-reviews.txt.gz", "bpe", 8192, "gpt2"),
    ("zh-reviews.txt.gz", "unigram", 8192, "llama")])
def test_token_estimates_are_near_what_the_tokenizer_counts(name: str, kind: str, vocab: int,
                                                            architecture: str):
    from jobspec.pretrain import TokenizerSpec
    from service.domain.estimates import text_tokens
    from workers.engine.tokenizer import count_characters, train_tokenizer

    with gzip.open(DATA / name, "rb") as f:
        data = f.read(150_000)
    docs = data[: data.rfind(b"\n")].decode().splitlines()
    tokenizer = train_tokenizer(docs, count_characters(docs), TokenizerSpec(
        type=kind, vocab_size=vocab, lowercase=kind == "wordpiece"), architecture, 512)
    counted = sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(
        docs, add_special_tokens=False))
    estimated = sum(text_tokens(doc, kind=kind, vocab_size=vocab) for doc in docs)
    assert 1 / TOKENS_FACTOR <= estimated / counted <= TOKENS_FACTOR, (estimated, counted)


def test_calibration_on_postgres(fresh_postgres: str):
    """Rows are made once per key and refined (a running mean); the slowest kind of worker
    that measured an architecture and objective sets the rate, scaled to another size."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from service.domain import calibration
    from service.domain.tables import Base

    engine = create_engine(fresh_postgres.replace("postgresql://", "postgresql+psycopg://"))
    Base.metadata.create_all(engine)
    key = {"architecture": "bert", "objective": "mlm"}
    try:
        with Session(engine) as s:
            assert calibration.rate(s, **key, parameters=1000) is None
            calibration.record(s, worker_kind="gpu", **key, parameters=1000,
                               tokens_per_second=900.0)
            calibration.record(s, worker_kind="cpu", **key, parameters=1000,
                               tokens_per_second=100.0)
            s.commit()
            calibration.record(s, worker_kind="cpu", **key, parameters=1000,
                               tokens_per_second=300.0, setup_seconds=8.0)
            s.commit()
            rows = throughput_of(s)
            assert rows == [("cpu", 2, 200.0), ("gpu", 1, 900.0)]
            measured = calibration.rate(s, **key, parameters=1000)
            assert measured == calibration.Rate(200.0, "measured", "cpu", setup_seconds=4.0)
            scaled = calibration.rate(s, **key, parameters=4000)
            assert scaled == calibration.Rate(50.0, "scaled", "cpu", setup_seconds=4.0)
            assert calibration.rate(s, architecture="gpt2", objective="clm",
                                    parameters=1000) is None
    finally:
        engine.dispose()


def throughput_of(session: Any) -> list[tuple[str, int, float]]:
    from service.domain.tables import ThroughputRow

    return [(r.worker_kind, r.jobs, r.tokens_per_second) for r in session.scalars(
        select(ThroughputRow).order_by(ThroughputRow.worker_kind)).all()]


def test_a_dry_run_whose_text_cannot_be_read_still_answers(client: TestClient):
    """Figures it cannot work out are null, never a 500 (the worker says what is wrong)."""
    from service.db import session_scope
    from service.domain.tables import DatasetRow
    from service.storage import get_store

    ds = client.post("/v1/datasets", files={"file": ("gone.txt", english(100_000))}).json()
    with session_scope() as s:
        row = s.get(DatasetRow, ds["id"])
        assert row is not None
        get_store().delete(row.storage_key)
    found = dry(client, tiny(ds["id"]))
    assert found["data"]["tokens"] is None and found["epochs"] is None
    assert found["steps"] == 30 and found["parameters"] > 0
