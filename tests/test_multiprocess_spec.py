"""What a multi-process job may ask for, in this process: POST /v1/jobs takes
resources.processes with a batch it divides, for pretraining and fine-tuning, whole (ddp) or
sharded (fsdp), and refuses with 422 an uneven split and fsdp on one process; a worker
refuses more processes than it has cores."""

import os

import pytest

from jobspec import parse_spec
from tests.inprocess import client, make_app
from workers.engine import ConfigError


def _refused(r, param: str, words: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_the_api_takes_an_even_split_and_refuses_the_rest(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch) as app:
        api = client(app)
        ds = api.post("/v1/datasets", files={"file": ("a.txt", b"one\ntwo\n")}).json()["id"]
        hp = {"batch_size": 8}
        r = api.post("/v1/jobs", json={"dataset_id": ds, "hyperparameters": hp,
                                       "resources": {"processes": 2}})
        assert r.status_code == 202, r.text
        assert r.json()["spec"]["resources"] == {"device": "auto", "processes": 2,
                                                 "strategy": "ddp"}

        _refused(api.post("/v1/jobs", json={"dataset_id": ds, "hyperparameters": hp,
                                            "resources": {"processes": 3}}),
                 "hyperparameters.batch_size", "batch_size (8) must be a multiple of "
                 "resources.processes (3)")
        r = api.post("/v1/jobs", json={"dataset_id": ds, "hyperparameters": hp,
                                       "resources": {"processes": 2, "strategy": "fsdp"}})
        assert r.status_code == 202, r.text
        assert r.json()["spec"]["resources"]["strategy"] == "fsdp"
        _refused(api.post("/v1/jobs", json={"dataset_id": ds, "hyperparameters": hp,
                                            "resources": {"strategy": "fsdp"}}),
                 "resources.strategy", "set resources.processes to 2 or more")
        _refused(api.post("/v1/jobs", json={"dataset_id": ds, "resources": {"processes": 0}}),
                 "resources.processes", "greater than or equal to 1")
        finetune = {"type": "finetune", "task": "text_classification", "dataset_id": ds,
                    "base_model_id": "m_x"}
        _refused(api.post("/v1/jobs", json={**finetune, "hyperparameters": {"batch_size": 32},
                                            "resources": {"processes": 3}}),
                 "hyperparameters.batch_size", "batch_size (32) must be a multiple of "
                 "resources.processes (3)")


def test_fine_tuning_takes_several_processes():
    spec = parse_spec({"type": "finetune", "task": "token_classification", "dataset_id": "ds_x",
                       "base_model_id": "m_x", "hyperparameters": {"batch_size": 16},
                       "resources": {"processes": 4, "strategy": "fsdp"}})
    assert (spec.resources.processes, spec.resources.strategy) == (4, "fsdp")


def test_a_worker_refuses_more_processes_than_its_cores(tmp_path):
    import torch

    from workers.multiprocess import run_multiprocess

    cores = len(os.sched_getaffinity(0))
    spec = parse_spec({"dataset_id": "ds_x", "hyperparameters": {"batch_size": 2 * (cores + 1)},
                       "resources": {"processes": cores + 1}})
    with pytest.raises(ConfigError, match=f"more than this worker's {cores} CPU cores"):
        run_multiprocess("job_x", spec, str(tmp_path), str(tmp_path), None,  # type: ignore
                         torch.device("cpu"))


def test_fsdp_lowers_what_each_process_needs():
    """The memory check and the dry run count one process's share: under fsdp its slice of
    the training state (after building the whole model once), so a model whose state does
    not fit one device can fit N of them; under ddp, a whole copy."""
    from jobspec.sizing import estimate_pretrain_bytes, pretrain_parameters

    def need(processes: int, strategy: str, batch: int = 8) -> int:
        return estimate_pretrain_bytes(parse_spec({
            "dataset_id": "ds_1", "model": {"size": "base"},
            "hyperparameters": {"batch_size": batch, "sequence_length": 128},
            "resources": {"processes": processes, "strategy": strategy}}))

    one, ddp = need(1, "ddp"), need(2, "ddp")
    fsdp2, fsdp4 = need(2, "fsdp"), need(4, "fsdp")
    parameters = pretrain_parameters(parse_spec({"dataset_id": "ds_1",
                                                 "model": {"size": "base"}}))
    assert ddp < one  # half the rows of each batch per process, the whole state
    assert ddp - fsdp2 == parameters * 16 - (parameters * 4 + parameters * 8)
    assert fsdp4 < fsdp2 < ddp
    assert need(2, "fsdp", batch=16) > fsdp2  # activations still grow with the batch
