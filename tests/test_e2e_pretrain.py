"""The whole loop as a user runs it: upload, pretrain by masked-LM on a real Celery worker
process, watch the loss curve, query fill-mask, download the export and load it with
plain transformers."""

import io
import tarfile
from pathlib import Path

import pytest

from tests.stack import Stack, corpus_slice

TINY_JOB = {
    "type": "pretrain", "objective": "mlm", "name": "tiny-bert", "validation_fraction": 0.05,
    "model": {"architecture": "bert", "size": "tiny"},
    "tokenizer": {"type": "wordpiece", "vocab_size": 2000, "lowercase": True},
    "hyperparameters": {"max_steps": 120, "batch_size": 16, "sequence_length": 64,
                        "learning_rate": 2e-3, "warmup_steps": 5, "seed": 0},
    "log_every": 5, "eval_every": 10, "checkpoint_every": 60,
}

HF_KEYS = {"score", "token", "token_str", "sequence"}


def pretrain_and_serve(stack: Stack, tmp_path: Path, filename: str, corpus: bytes,
                       probes: list[str], vocab_size: int = 2000) -> None:
    # 1. upload
    r = stack.upload(filename, corpus, name="slice")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["object"] == "dataset" and ds["bytes"] == len(corpus) and ds["documents"] > 0
    assert stack.client.get(f"/v1/datasets/{ds['id']}").json() == ds

    # 2. submit and wait
    r = stack.client.post("/v1/jobs", json={
        **TINY_JOB, "dataset_id": ds["id"],
        "tokenizer": {**TINY_JOB["tokenizer"], "vocab_size": vocab_size}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"]["total_steps"] == 120
    job = stack.wait_job(job["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["progress"]["step"] == 120 and job["progress"]["tokens_seen"] == 120 * 16 * 64
    assert job["model_id"] and job["error"] is None
    assert job["id"] in [j["id"] for j in stack.client.get("/v1/jobs").json()["data"]]

    # 3. the loss curve: a point per logged step, eval points; held-out loss went down
    curve = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    steps = [p["step"] for p in curve]
    assert steps == sorted(set(steps)) and steps[-1] == 120
    assert {5, 10, 115, 120} <= set(steps)
    for p in curve:
        if p["step"] % 5 == 0:
            assert {"train_loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(p)
    evals = [p for p in curve if "eval_loss" in p]
    assert [p["step"] for p in evals] == list(range(10, 121, 10))
    assert all({"perplexity", "accuracy"} <= set(p) for p in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.3, evals
    newer = stack.client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_step": 40})
    assert [p["step"] for p in newer.json()["data"]] == [s for s in steps if s > 40]

    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert any("tokenizer" in e["message"] for e in events)
    ckpts = stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in ckpts] == [60, 120] and all(c["bytes"] > 0 for c in ckpts)

    # 4. fill-mask in the Hugging Face format
    model_id = job["model_id"]
    model = stack.client.get(f"/v1/models/{model_id}").json()
    assert model["mask_token"] == "[MASK]"
    url = f"/v1/models/{model_id}/fill-mask"
    answers = {}
    for text in probes:
        r = stack.client.post(url, json={"inputs": text})
        assert r.status_code == 200, r.text
        flat = r.json()
        assert isinstance(flat, list) and len(flat) == 5
        assert all(set(a) == HF_KEYS for a in flat)
        assert [a["score"] for a in flat] == sorted((a["score"] for a in flat), reverse=True)
        answers[text] = flat
    r = stack.client.post(url, json={"inputs": probes[0], "parameters": {"top_k": 2}})
    assert len(r.json()) == 2
    two = stack.client.post(url, json={"inputs": f"{probes[0]} [MASK]"}).json()
    assert len(two) == 2 and all(isinstance(x, list) and len(x) == 5 for x in two)
    many = stack.client.post(url, json={"inputs": probes}).json()
    assert [[a["token"] for a in x] for x in many] == [
        [a["token"] for a in answers[t]] for t in probes]
    target = answers[probes[0]][1]["token_str"]
    only = stack.client.post(url, json={"inputs": probes[0],
                                        "parameters": {"targets": [target]}}).json()
    assert [a["token_str"] for a in only] == [target]
    r = stack.client.post(url, json={"inputs": "no mask here"})
    assert r.status_code == 422 and "[MASK]" in r.json()["error"]["message"]

    # 5. the unchanged Hugging Face client
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{stack.url}{url}")
    hf = client.fill_mask(probes[0])
    assert [a.token for a in hf] == [a["token"] for a in answers[probes[0]]]

    # 6. the download is a plain HF directory that transformers' pipeline loads
    r = stack.client.get(f"/v1/models/{model_id}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    export = tmp_path / model_id
    assert {"config.json", "model.safetensors"} <= {p.name for p in export.iterdir()}
    from transformers import pipeline

    local = pipeline("fill-mask", model=str(export), device="cpu")
    for text in probes:
        ours = answers[text]
        theirs = local(text)
        assert [a["token"] for a in theirs] == [a["token"] for a in ours]
        assert [a["sequence"] for a in theirs] == [a["sequence"] for a in ours]
        assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(theirs, ours, strict=True))


EN_PROBES = ["the [MASK] of the lord.", "and he said unto them, [MASK] ye not?"]
ZH_PROBES = ["北京是中国的[MASK]都。", "房间很干[MASK]，服务也很好。"]


@pytest.mark.slow
def test_english_on_postgres_and_redis(pg_redis_stack, data_dir, tmp_path):
    corpus = corpus_slice(data_dir / "en-pretrain.txt.gz", 1_000_000)
    pretrain_and_serve(pg_redis_stack, tmp_path, "en.txt", corpus, EN_PROBES)


@pytest.mark.slow
def test_chinese_on_postgres_and_redis(pg_redis_stack, data_dir, tmp_path):
    corpus = corpus_slice(data_dir / "zh-reviews.txt.gz", 1_000_000)
    pretrain_and_serve(pg_redis_stack, tmp_path, "zh.txt", corpus, ZH_PROBES, vocab_size=6000)


@pytest.mark.slow
def test_english_on_embedded_default(embedded_stack, data_dir, tmp_path):
    corpus = corpus_slice(data_dir / "en-pretrain.txt.gz", 1_000_000)
    pretrain_and_serve(embedded_stack, tmp_path, "en.txt", corpus, EN_PROBES)


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(embedded_stack, data_dir):
    """keep_checkpoints bounds what a long job leaves in storage: the older checkpoints'
    records and files go as new ones land."""
    stack = embedded_stack
    ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 100_000)).json()
    r = stack.client.post("/v1/jobs", json={
        **TINY_JOB, "dataset_id": ds["id"], "keep_checkpoints": 2,
        "hyperparameters": {**TINY_JOB["hyperparameters"], "max_steps": 40},
        "eval_every": 20, "checkpoint_every": 10})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["keep_checkpoints"] == 2
    job = stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    ckpts = stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert sorted(c["step"] for c in ckpts) == [30, 40]
    on_disk = sorted(p.name for p in
                     (stack.home / "objects" / "jobs" / job["id"] / "checkpoints").iterdir())
    assert on_disk == ["step-00000030", "step-00000040"]
    events = [e["message"] for e in
              stack.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert any("deleted 1 older checkpoint(s)" in m for m in events), events
