"""Publishing a checkpoint of a (running) job as a model, and deleting models: in-process, the
whole app on SQLite with a local object directory. Checkpoints are built here as the engine
writes them (save_pretrained of a tiny BERT and its tokenizer, optimizer and trainer state,
then the manifest), and recorded as the worker records them."""

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.inference_helpers import bert
from tests.inprocess import client, make_app, make_key

MASKED = "the quick brown [MASK] jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: Path) -> Iterator[FastAPI]:
    from service.inference import pipelines

    # A quota that holds two checkpoints (they count in it: the model and ~2 kB) and
    # one published tiny model, but not two.
    model = sum(p.stat().st_size for p in tiny.iterdir())
    quota = int(2 * (model + 4096) + 1.5 * model)
    pipelines._cache.cache_clear()  # the model cache reads this test's settings and store
    with make_app(tmp_path, monkeypatch, CLOZE_STORAGE_QUOTA_BYTES=str(quota)) as app:
        yield app
    pipelines._cache.cache_clear()


@pytest.fixture
def alice(app: FastAPI) -> TestClient:
    return client(app, Authorization=f"Bearer {make_key('alice')}")


@pytest.fixture
def bob(app: FastAPI) -> TestClient:
    return client(app, Authorization=f"Bearer {make_key('bob')}")


def _job(owner: str = "alice", status: str = "running", **spec: Any) -> str:
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    job_id = new_id("job")
    spec = {"name": "tiny", "objective": "mlm", "model": {"architecture": "bert"},
            "hyperparameters": {"sequence_length": 32}, **spec}
    with session_scope() as s:
        row = lifecycle.new_job(id=job_id, owner=owner, type=spec.pop("type", "pretrain"),
                                name="tiny", spec=spec, dataset_id="ds_none", total_steps=100)
        row.status = status
        s.add(row)
    return job_id


def _checkpoint(job_id: str, step: int, model_dir: Path, work: Path) -> str:
    """A checkpoint of `step` as save_checkpoint and the reporter leave it: the files under
    jobs/<job>/checkpoints/step-XXXXXXXX (manifest last) and a checkpoints row."""
    import torch
    from safetensors.torch import save_file

    from service.db import session_scope
    from service.domain.ids import new_id
    from service.domain.tables import CheckpointRow
    from service.storage import get_store
    from workers.engine.checkpoint import write_manifest

    local = work / f"ckpt-{job_id}-{step}"
    shutil.copytree(model_dir, local)
    save_file({"state.0.exp_avg": torch.zeros(4)}, str(local / "optimizer.safetensors"))
    (local / "trainer_state.json").write_text(json.dumps({"format_version": 3, "step": step}))
    write_manifest(local, step)
    prefix = f"jobs/{job_id}/checkpoints/step-{step:08d}"
    size = get_store().put_dir(local, prefix, last="manifest.json")
    with session_scope() as s:
        s.add(CheckpointRow(id=new_id("ckpt"), job_id=job_id, step=step, storage_prefix=prefix,
                            bytes=size, metrics={"train_loss": 1.0},
                            sha256=hashlib.sha256((local / "manifest.json").read_bytes())
                            .hexdigest()))
    return prefix


def _objects(tmp_path: Path, prefix: str) -> set[str]:
    root = tmp_path / "objects" / prefix
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _error(r: Any, status: int, code: str, says: str = "") -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and says in error["message"], error


def test_a_checkpoint_of_a_running_job_is_published_and_answers_fill_mask(
        alice: TestClient, tiny: Path, tmp_path: Path):
    from transformers import pipeline

    job = _job()
    _checkpoint(job, 20, tiny, tmp_path)
    r = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish")
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["job_id"], model["checkpoint_step"], model["task"], model["mask_token"]) == \
        (job, 20, "fill-mask", "[MASK]")
    assert model["details"]["checkpoint"]["step"] == 20
    # What a final export holds (save_pretrained of the model and of the tokenizer), not the
    # optimizer's or trainer's state, nor the manifest.
    export_files = {p.name for p in tiny.iterdir()}
    assert "model.safetensors" in export_files
    assert _objects(tmp_path, f"models/{model['id']}/files") == export_files
    with tarfile.open(fileobj=io.BytesIO(alice.get(
            f"/v1/models/{model['id']}/download").content)) as tar:
        assert {Path(n).name for n in tar.getnames() if "/" in n} == export_files
    answer = alice.post(f"/v1/models/{model['id']}/fill-mask", json={"inputs": MASKED})
    assert answer.status_code == 200, answer.text
    reference = pipeline("fill-mask", model=str(tiny), device="cpu")(MASKED)
    assert [a["token_str"] for a in answer.json()] == [a["token_str"] for a in reference]
    assert alice.get(f"/v1/jobs/{job}").json()["status"] == "running"


def test_an_unknown_step_or_job_is_404(alice: TestClient, tiny: Path, tmp_path: Path):
    job = _job()
    _checkpoint(job, 20, tiny, tmp_path)
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/30/publish"), 404, "not_found",
           "no checkpoint at step 30")
    _error(alice.post("/v1/jobs/job_nope/checkpoints/20/publish"), 404, "not_found")
    assert alice.post(f"/v1/jobs/{job}/checkpoints/-1/publish").status_code == 422
    assert alice.post(f"/v1/jobs/{job}/checkpoints/{2**70}/publish").status_code == 422
    assert alice.get("/v1/models").json()["data"] == []


def test_another_owners_job_and_model_are_404(alice: TestClient, bob: TestClient, tiny: Path,
                                              tmp_path: Path):
    job = _job()
    _checkpoint(job, 20, tiny, tmp_path)
    _error(bob.post(f"/v1/jobs/{job}/checkpoints/20/publish"), 404, "not_found")
    model = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish").json()
    _error(bob.delete(f"/v1/models/{model['id']}"), 404, "not_found")
    _error(bob.get(f"/v1/models/{model['id']}"), 404, "not_found")
    assert alice.get(f"/v1/models/{model['id']}").status_code == 200


def test_publishing_a_step_twice_returns_the_same_model(alice: TestClient, tiny: Path,
                                                        tmp_path: Path):
    job = _job()
    _checkpoint(job, 20, tiny, tmp_path)
    first = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish")
    again = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert [m["id"] for m in alice.get("/v1/models").json()["data"]] == [first.json()["id"]]
    assert len(list((tmp_path / "objects" / "models").iterdir())) == 1


def test_delete_removes_the_model_everywhere_and_frees_its_quota(
        alice: TestClient, tiny: Path, tmp_path: Path):
    from service.inference import pipelines

    job = _job()
    _checkpoint(job, 20, tiny, tmp_path)
    _checkpoint(job, 30, tiny, tmp_path)
    model = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish").json()
    id_ = model["id"]
    # The quota holds one tiny model, not two.
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/30/publish"), 413,
           "storage_quota_exceeded")
    assert alice.post(f"/v1/models/{id_}/fill-mask", json={"inputs": MASKED}).status_code \
        == 200
    assert id_ in pipelines._cache().loaded()
    assert (tmp_path / "cache" / "models" / id_).is_dir()

    assert alice.delete(f"/v1/models/{id_}").status_code == 204
    for method, path in (("GET", ""), ("GET", "/download"), ("POST", "/fill-mask"),
                         ("POST", "/classify"), ("GET", "/fill-mask/health"),
                         ("DELETE", "")):
        r = alice.request(method, f"/v1/models/{id_}{path}", json={"inputs": MASKED})
        _error(r, 404, "not_found", id_)
    assert alice.get("/v1/models").json()["data"] == []
    assert not (tmp_path / "objects" / "models" / id_).exists()
    assert id_ not in pipelines._cache().loaded()
    assert not (tmp_path / "cache" / "models" / id_).exists()
    # Its bytes are free again: the other step now fits.
    assert alice.post(f"/v1/jobs/{job}/checkpoints/30/publish").status_code == 201
    # The checkpoints themselves stay with their job.
    assert _objects(tmp_path, f"jobs/{job}/checkpoints/step-00000020")


def test_the_base_model_of_a_queued_job_cannot_be_deleted(alice: TestClient, tiny: Path,
                                                         tmp_path: Path):
    from service.db import session_scope
    from service.domain.tables import JobRow

    source = _job()
    _checkpoint(source, 20, tiny, tmp_path)
    base = alice.post(f"/v1/jobs/{source}/checkpoints/20/publish").json()["id"]
    user = _job(status="queued", type="finetune", task="text_classification",
                base_model_id=base)
    _error(alice.delete(f"/v1/models/{base}"), 409, "conflict", user)
    assert alice.get(f"/v1/models/{base}").status_code == 200
    with session_scope() as s:
        row = s.get(JobRow, user)
        assert row is not None
        row.status = "cancelled"
    assert alice.delete(f"/v1/models/{base}").status_code == 204


def test_a_checkpoint_that_does_not_verify_is_409(alice: TestClient, tiny: Path,
                                                  tmp_path: Path):
    job = _job()
    prefix = _checkpoint(job, 20, tiny, tmp_path)
    weights = tmp_path / "objects" / prefix / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/20/publish"), 409, "checkpoint_corrupt",
           "model.safetensors does not match")
    (tmp_path / "objects" / prefix / "manifest.json").write_text("{}")
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/20/publish"), 409, "checkpoint_corrupt",
           "manifest")
    assert not (tmp_path / "objects" / "models").exists()


def test_a_lora_checkpoint_is_refused(alice: TestClient, tiny: Path, tmp_path: Path):
    job = _job(type="finetune", task="text_classification", adapter={"type": "lora", "r": 8})
    _checkpoint(job, 20, tiny, tmp_path)
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/20/publish"), 409,
           "checkpoint_not_publishable", "LoRA")


def test_unmerged_adapter_weights_are_refused_whatever_the_spec_says(
        alice: TestClient, tmp_path: Path):
    """What a LoRA checkpoint holds: peft's names beside the base weights."""
    import torch
    from safetensors.torch import save_file

    from tests.inference_helpers import tokenizer

    model_dir = tmp_path / "lora"
    tokenizer(model_dir)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"bert.encoder.layer.0.attention.self.query.base_layer.weight": torch.zeros(2, 2),
               "bert.encoder.layer.0.attention.self.query.lora_A.default.weight":
               torch.zeros(1, 2)}, str(model_dir / "model.safetensors"))
    job = _job()
    _checkpoint(job, 20, model_dir, tmp_path)
    _error(alice.post(f"/v1/jobs/{job}/checkpoints/20/publish"), 409,
           "checkpoint_not_publishable", "LoRA")
    assert not (tmp_path / "objects" / "models").exists()


def test_a_full_fine_tuning_checkpoint_is_served_by_classify(alice: TestClient,
                                                             tmp_path: Path):
    from transformers import pipeline

    model_dir = bert(tmp_path / "clf", head="classify", labels=3)
    job = _job(type="finetune", task="text_classification", base_model_id="m_gone",
               adapter=None)
    _checkpoint(job, 20, model_dir, tmp_path)
    r = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish")
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["task"], model["architecture"]) == ("text-classification", "bert")
    assert model["details"]["labels"] == ["label_0", "label_1", "label_2"]
    # top_k explicit on both sides: the default depends on the process's max_top_k.
    answer = alice.post(f"/v1/models/{model['id']}/classify",
                        json={"inputs": "a small cat", "parameters": {"top_k": 3}})
    assert answer.status_code == 200, answer.text
    reference = pipeline("text-classification", model=str(model_dir), device="cpu",
                         top_k=3)(["a small cat"])[0]
    assert [a["label"] for a in answer.json()[0]] == [a["label"] for a in reference], \
        (answer.json(), reference)
    _error(alice.post(f"/v1/models/{model['id']}/fill-mask", json={"inputs": MASKED}), 422,
           "wrong_task")
