"""A checkpoint published while its job trains, on the embedded stack (uvicorn + a Celery
worker process): fill-mask answers on it, then deleting it makes it 404 everywhere."""

import time

import pytest

from tests.stack import corpus_slice
from tests.test_e2e_pretrain import HF_KEYS, TINY_JOB


@pytest.mark.slow
def test_a_checkpoint_published_mid_training_answers_fill_mask_until_deleted(
        embedded_stack, data_dir):
    stack = embedded_stack
    ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 100_000)).json()
    r = stack.client.post("/v1/jobs", json={
        **TINY_JOB, "dataset_id": ds["id"],
        "hyperparameters": {**TINY_JOB["hyperparameters"], "max_steps": 60},
        "eval_every": 20, "checkpoint_every": 10})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    # Publish step 20 as soon as its checkpoint is recorded, most likely mid-training.
    deadline = time.monotonic() + 600
    while not any(c["step"] == 20 for c in stack.client.get(
            f"/v1/jobs/{job_id}/checkpoints").json()["data"]):
        assert time.monotonic() < deadline, stack.logs()
        assert stack.client.get(f"/v1/jobs/{job_id}").json()["status"] in \
            ("queued", "running"), stack.logs()
        time.sleep(0.5)
    r = stack.client.post(f"/v1/jobs/{job_id}/checkpoints/20/publish")
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["job_id"], model["checkpoint_step"], model["task"]) == \
        (job_id, 20, "fill-mask")
    mask = model["mask_token"]
    answer = stack.client.post(f"/v1/models/{model['id']}/fill-mask",
                               json={"inputs": f"the {mask} of the"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 5 and set(answer.json()[0]) == HF_KEYS

    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["model_id"] != model["id"]
    assert stack.client.post(f"/v1/jobs/{job_id}/checkpoints/20/publish").json()["id"] == \
        model["id"]

    assert stack.client.delete(f"/v1/models/{model['id']}").status_code == 204
    for method, path in (("GET", ""), ("GET", "/download"), ("POST", "/fill-mask")):
        r = stack.client.request(method, f"/v1/models/{model['id']}{path}",
                                 json={"inputs": f"the {mask} of the"})
        assert r.status_code == 404, (method, path, r.text)
    assert not (stack.home / "objects" / "models" / model["id"]).exists()
    assert stack.client.get(f"/v1/models/{job['model_id']}").status_code == 200
