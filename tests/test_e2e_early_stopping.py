"""Early stopping and cloze probes through the API with a real worker: a job whose eval loss
stops improving ends before max_steps, and its model is the best eval's, saying which step
that is, with a model card that shows that eval and its probes; every eval point carries
the probes' ranks."""

import io
import tarfile

import pytest

from tests.stack import corpus_slice
from tests.test_e2e_pretrain import HF_KEYS, TINY_JOB


@pytest.mark.slow
def test_early_stopping_ends_the_job_and_publishes_the_best_eval(embedded_stack, data_dir):
    stack = embedded_stack
    ds = stack.upload("c.txt", corpus_slice(data_dir / "en-valid.txt.gz", 100_000)).json()
    # min_delta 100: no eval after the first is better, so the job ends after two more.
    r = stack.client.post("/v1/jobs", json={
        **TINY_JOB, "dataset_id": ds["id"], "checkpoint_every": 100,
        "early_stopping": {"metric": "eval_loss", "patience": 2, "min_delta": 100},
        "probes": [{"text": "the [MASK] of the union", "expected": "state"}]})
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    evals = [p for p in stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
             if p.get("eval_loss") is not None]
    assert [p["step"] for p in evals] == [10, 20, 30]  # of max_steps 120
    for point in evals:
        [probe] = point["probes"]
        assert probe["expected"] == "state" and probe["rank"] >= 1 and len(probe["top"]) == 5
    events = stack.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert any("early stopping at step 30 of 120" in e["message"] for e in events)

    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["checkpoint_step"] == 10
    mask = model["mask_token"]
    answer = stack.client.post(f"/v1/models/{model['id']}/fill-mask",
                               json={"inputs": f"the {mask} of the"})
    assert answer.status_code == 200 and set(answer.json()[0]) == HF_KEYS
    archive = stack.client.get(f"/v1/models/{model['id']}/download").content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        card = tar.extractfile(f"{model['id']}/README.md").read().decode()
    assert f"| eval_loss | {evals[0]['eval_loss']:.4f} |" in card
    assert "pipeline_tag: fill-mask" in card
    assert f"| the [MASK] of the union | state | {evals[0]['probes'][0]['rank']} |" in card
    # Model validation: a spec that cannot stop early is refused before it is queued.
    bad = stack.client.post("/v1/jobs", json={**TINY_JOB, "dataset_id": ds["id"],
                                               "early_stopping": {"patience": 0}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == \
        "early_stopping.patience"
