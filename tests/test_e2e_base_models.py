"""Building on the base models people already have (issue 21), through the HTTP API: a
Hugging Face directory saved from BertModel (plain, and in the sentence-transformers layout
with its pooling files) or GPT2Model imports as a feature-extraction model; continued
pretraining (mlm from a base encoder, clm from a base decoder) and fine-tuning start from
it, each lowering its loss, and the fine-tuned model classifies. Which objective a base
takes is its architecture's: clm from a BERT or mlm from a GPT-2 is a 422 naming
`objective`, and a model with another head keeps today's rules."""

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.engine.test_base_models import (
    FINETUNE_HP,
    LORA,
    _tokenizer,
    save_base_bert,
    save_base_decoder,
    topic_records,
)
from tests.inprocess import client, make_app
from tests.stack import Stack, corpus_slice

PRETRAIN_HP = {"max_steps": 30, "batch_size": 16, "sequence_length": 64,
               "learning_rate": 5e-3, "warmup_steps": 5, "seed": 0}


def _archive(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(directory, arcname="model")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def english(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 KB of English prose: the corpus the bases' tokenizers are trained on and the
    continued pretraining reads."""
    path = tmp_path_factory.mktemp("english") / "english.txt"
    path.write_bytes(corpus_slice(data_dir / "en-pretrain.txt.gz", 300_000))
    return path


@pytest.fixture(scope="module")
def bases(english: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Archives of tiny base models (random weights) as people bring them."""
    folder = tmp_path_factory.mktemp("bases")
    wordpiece = _tokenizer(english, "wordpiece", "bert")
    return {
        "bert": _archive(save_base_bert(wordpiece, folder / "bert")),
        "sentence-transformers": _archive(save_base_bert(wordpiece, folder / "st",
                                                         "sentence-transformers")),
        "gpt2": _archive(save_base_decoder(_tokenizer(english, "bpe", "gpt2"),
                                           folder / "gpt2", "gpt2")),
    }


# -- Admission, in-process: which objectives a base without a head takes


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with make_app(tmp_path, monkeypatch) as app:
        yield client(app)


def _model(model_id: str, task: str, architecture: str) -> None:
    """A model row as an import records one (the checks read only the row)."""
    from service.db import session_scope
    from service.domain.tables import ModelRow

    with session_scope() as s:
        s.add(ModelRow(id=model_id, name=model_id, job_id=None, task=task,
                       architecture=architecture, mask_token=None,
                       storage_prefix=f"models/{model_id}/files",
                       archive_key=f"models/{model_id}/{model_id}.tar.gz", bytes=1,
                       details={"imported": True}))


def test_a_base_without_a_head_is_continued_by_its_architectures_objectives(app_client):
    _model("m_bert", "feature-extraction", "bert")
    _model("m_gpt2", "feature-extraction", "gpt2")
    _model("m_classifier", "text-classification", "bert")
    r = app_client.post("/v1/datasets", files={"file": ("t.txt", b"a text.\nanother one.\n")})
    assert r.status_code == 201, r.text
    text = r.json()["id"]

    def dry(**spec) -> tuple[int, dict]:
        r = app_client.post("/v1/jobs", params={"dry_run": "true"},
                            json={"dataset_id": text, **spec})
        return r.status_code, r.json()

    status, body = dry(base_model_id="m_bert")
    assert status == 200, body
    assert body["spec"]["objective"] == "mlm" and body["spec"]["model"]["architecture"] == "bert"
    assert body["spec"]["tokenizer"]["type"] == "from_model"
    assert dry(base_model_id="m_bert", objective="mlm_nsp")[0] == 200
    status, body = dry(base_model_id="m_gpt2")
    assert status == 200 and body["spec"]["objective"] == "clm", body
    # Named, the objective is read against the base's architecture, not the default BERT's.
    assert dry(base_model_id="m_gpt2", objective="clm")[0] == 200
    # The architecture decides: a BERT is not continued by causal LM, nor a GPT-2 by mlm.
    status, body = dry(base_model_id="m_bert", objective="clm")
    assert status == 422 and body["error"]["param"] == "objective", body
    assert "clm trains gpt2 or llama, not bert" in body["error"]["message"]
    status, body = dry(base_model_id="m_gpt2", objective="mlm")
    assert status == 422 and body["error"]["param"] == "objective", body
    # A model with another head keeps today's rule.
    status, body = dry(base_model_id="m_classifier")
    assert status == 422 and body["error"]["param"] == "base_model_id", body
    assert "text-classification" in body["error"]["message"]
    assert "feature-extraction" in body["error"]["message"]


# -- Through the API with a real worker


@pytest.fixture(scope="module")
def imported(pg_redis_stack: Stack, bases: dict[str, bytes]) -> dict[str, dict]:
    """Each base imported with POST /v1/models/import."""
    models = {}
    for layout, archive in bases.items():
        r = pg_redis_stack.client.post("/v1/models/import",
                                       files={"file": (f"{layout}.tar.gz", archive)})
        assert r.status_code == 201, r.text
        models[layout] = r.json()
    return models


def _job(stack: Stack, **spec) -> dict:
    r = stack.client.post("/v1/jobs", json={"log_every": 5, "eval_every": 10,
                                            "checkpoint_every": 100, **spec})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=600)
    assert job["status"] == "succeeded", (job, stack.logs()[-3000:])
    return job


def _evals(stack: Stack, job: dict) -> list[dict]:
    curve = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    return [p for p in curve if p.get("eval_loss") is not None]


def _events(stack: Stack, job: dict) -> list[str]:
    return [e["message"] for e in
            stack.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]


@pytest.mark.slow
def test_bases_import_as_feature_extraction(pg_redis_stack, imported):
    assert {layout: (m["task"], m["architecture"]) for layout, m in imported.items()} == {
        "bert": ("feature-extraction", "bert"),
        "sentence-transformers": ("feature-extraction", "bert"),
        "gpt2": ("feature-extraction", "gpt2")}
    stack = pg_redis_stack
    r = stack.upload("t.txt", b"a text.\nanother one.\n")
    assert r.status_code == 201, r.text
    body = {"dataset_id": r.json()["id"], "objective": "clm",
            "base_model_id": imported["bert"]["id"]}
    r = stack.client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == "objective", r.text
    r = stack.client.post("/v1/jobs", params={"dry_run": "true"},
                          json={**body, "base_model_id": imported["gpt2"]["id"]})
    assert r.status_code == 200 and r.json()["spec"]["model"]["architecture"] == "gpt2", r.text


@pytest.mark.slow
def test_continued_mlm_from_an_imported_base_encoder(pg_redis_stack, imported, english,
                                                     tmp_path):
    stack = pg_redis_stack
    r = stack.upload("english.txt", english.read_bytes(), name="english")
    assert r.status_code == 201, r.text
    base = imported["sentence-transformers"]["id"]
    job = _job(stack, dataset_id=r.json()["id"], base_model_id=base, validation_fraction=0.05,
               hyperparameters=PRETRAIN_HP)
    assert job["spec"]["objective"] == "mlm"
    evals = _evals(stack, job)
    # The first eval, at step 0: where the base with its new MLM head stands.
    assert [p["step"] for p in evals] == [0, 10, 20, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5, evals
    said = _events(stack, job)
    assert any("new weights" in m and "cls.predictions.transform" in m for m in said), said
    assert any("cls.predictions.decoder is tied to the input embeddings" in m
               for m in said), said
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "fill-mask" and model["mask_token"] == "[MASK]"
    r = stack.client.post(f"/v1/models/{model['id']}/fill-mask",
                          json={"inputs": "the [MASK] of the union."})
    assert r.status_code == 200 and len(r.json()) == 5, r.text
    # It serves embeddings by mean pooling, and its download says so to sentence-transformers.
    from sentence_transformers import SentenceTransformer

    texts = ["the state of the union is strong.", "we the people"]
    r = stack.client.post(f"/v1/models/{model['id']}/feature-extraction",
                          json={"inputs": texts})
    assert r.status_code == 200, r.text
    local = SentenceTransformer(str(stack.download(model["id"], tmp_path)), device="cpu")
    assert np.abs(np.array(r.json()) - local.encode(texts)).max() < 1e-4


@pytest.mark.slow
def test_finetune_from_an_imported_base_encoder(pg_redis_stack, imported, english):
    stack = pg_redis_stack
    records = topic_records(english.read_text(encoding="utf-8"))
    r = stack.upload("topics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    assert r.status_code == 201, r.text
    job = _job(stack, type="finetune", task="text_classification",
               base_model_id=imported["bert"]["id"], dataset_id=r.json()["id"],
               adapter=LORA, log_every=1,
               hyperparameters={"max_steps": 40, "batch_size": 16, "sequence_length": 64,
                                **FINETUNE_HP["lora"]})
    curve = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    evals = [p for p in curve if p.get("eval_loss") is not None]
    assert [p["step"] for p in evals] == [10, 20, 30, 40]
    # From the untrained head's ~ln 2 at step 1 (the labels come half and half) down.
    assert curve[0]["step"] == 1 and curve[0]["train_loss"] > 0.6, curve[0]
    assert evals[-1]["eval_loss"] < curve[0]["train_loss"] - 0.4, evals
    assert evals[-1]["accuracy"] > 0.9, evals
    assert any("new head: classifier" in m for m in _events(stack, job))
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["task"] == "text-classification"
    r = stack.client.post(f"/v1/models/{model['id']}/classify",
                          json={"inputs": "war was declared"})
    assert r.status_code == 200, r.text
    assert r.json()[0][0]["label"] == "war", r.json()
