"""The one loop under torch.distributed (2 gloo processes, spawned here), the model whole on
each rank (ddp) or sharded among them (fsdp): per-step losses equal the 1-process run's at
the same global batch, and a stopped 2-process run resumes exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from jobspec import PretrainSpec, parse_spec
from tests.engine.conftest import RecordingReporter
from tests.stack import free_port
from workers.engine import prepare_data, run_pretraining
from workers.engine.distributed import Parallel

pytestmark = pytest.mark.slow

STEPS, STOP_AT = 8, 4
# Each rank sums its half of the batch and gloo sums the halves: the same numbers as one
# process up to float summation order, which Adam amplifies a little over the steps. In
# bf16 (the default where the CPU has it) half-batch matmuls round differently: 1e-4.
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-4}


def _spec(make_spec: Any, **hp: Any) -> Any:
    spec = make_spec(max_steps=STEPS, warmup_steps=2, batch_size=8, **hp)
    return parse_spec({**spec, "log_every": 1, "eval_every": 1000,
                       "checkpoint_every": STOP_AT})


def _rank(rank: int, port: int, spec_json: dict[str, Any], data: str, out: str,
          strategy: str) -> None:
    """One rank: a straight run, then a run stopped at STOP_AT and its resume."""
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    parallel = Parallel(rank=rank, world=2, strategy=strategy)
    spec = parse_spec(spec_json)
    assert isinstance(spec, PretrainSpec)
    try:
        runs: dict[str, Any] = {}
        straight = RecordingReporter()
        run_pretraining(spec, data, f"{out}/straight", straight, device="cpu",
                        parallel=parallel)
        first = RecordingReporter(stop_after_logs=STOP_AT)
        stopped = run_pretraining(spec, data, f"{out}/first", first, device="cpu",
                                  parallel=parallel)
        # Rank 0 alone writes checkpoints; the others resume from the files it wrote.
        checkpoint = f"{out}/first/checkpoints/step-{STOP_AT:08d}"
        second = RecordingReporter()
        resumed = run_pretraining(spec, data, f"{out}/second", second, device="cpu",
                                  resume_from=checkpoint, parallel=parallel)
        runs = {"straight": straight.logs, "first": first.logs, "second": second.logs,
                "events": [m for _, m in straight.events], "checkpoints": first.checkpoints,
                "stopped": [stopped.stopped, stopped.steps],
                "export": resumed.export_dir}
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(runs))
    finally:
        dist.destroy_process_group()


def _losses(points: list[dict[str, Any]]) -> list[float]:
    return [p["train_loss"] for p in points]


@pytest.mark.parametrize("strategy,precision,hp", [
    ("ddp", "bf16", {}),
    ("ddp", "fp32", {"micro_batch_size": 2}),
    ("ddp", "fp32", {"architecture": "gpt2"}),
    ("fsdp", "fp32", {"micro_batch_size": 2}),
    ("fsdp", "fp32", {"architecture": "gpt2"}),
], ids=["mlm-bf16", "mlm-accumulation-fp32", "gpt2-clm-fp32", "fsdp-mlm-accumulation-fp32",
        "fsdp-gpt2-clm-fp32"])
def test_two_processes_match_one_and_resume_exactly(en_data, en_corpus, tmp_path, make_spec,
                                                    strategy, precision, hp):
    spec = _spec(make_spec, precision=precision, **hp)
    data = en_data
    if "architecture" in hp:  # its own tokenizer
        data = tmp_path / "data"
        prepare_data(spec, str(en_corpus), "txt", str(data), RecordingReporter())
    one = RecordingReporter()
    run_pretraining(spec, str(data), str(tmp_path / "one"), one, device="cpu")

    mp.spawn(_rank, args=(free_port(), spec.model_dump(mode="json"), str(data),
                          str(tmp_path), strategy), nprocs=2, join=True)
    main = json.loads((tmp_path / "rank0.json").read_text())
    other = json.loads((tmp_path / "rank1.json").read_text())

    # The same per-step losses as 1 process at the same global batch.
    assert len(main["straight"]) == STEPS
    assert _losses(main["straight"]) == pytest.approx(_losses(one.logs),
                                                      rel=TOLERANCE[precision])
    assert [p["tokens_seen"] for p in main["straight"]] == \
        [p["tokens_seen"] for p in one.logs]
    started = "training on 2 processes (gloo), each on its slice of every batch"
    if strategy == "fsdp":
        started += ", the model sharded among them (fsdp)"
    assert started in main["events"]
    # Only rank 0 reports, checkpoints and exports.
    assert other["straight"] == [] and other["checkpoints"] == [] and other["export"] is None
    assert main["export"] is not None
    # Stop at STOP_AT, resume with 2 processes: exactly the straight 2-process curve.
    assert main["stopped"] == [True, STOP_AT]
    assert [s for s, _ in main["checkpoints"]] == [STOP_AT]
    assert _losses(main["first"]) + _losses(main["second"]) == _losses(main["straight"])
    state = json.loads((Path(main["checkpoints"][0][1]) / "trainer_state.json").read_text())
    assert len(state["rng"]["ranks"]) == 2  # each rank's own dropout generator
    # A checkpoint holds the whole model and optimizer (fsdp: gathered), as 1 process's.
    if precision == "fp32":
        for name in ("model.safetensors", "optimizer.safetensors"):
            ours = load_file(Path(main["checkpoints"][0][1]) / name)
            theirs = load_file(Path(one.checkpoints[0][1]) / name)
            assert ours.keys() == theirs.keys()
            assert all(ours[k].allclose(theirs[k], rtol=1e-4, atol=1e-6) for k in theirs)
