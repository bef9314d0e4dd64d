"""Fine-tuning under torch.distributed (2 gloo processes, spawned here): text and token
classification, full and LoRA, give the per-step losses of the 1-process run at the same
global batch, rank 0 alone reports, checkpoints and exports, and a stopped 2-process run
resumes exactly."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from jobspec import FinetuneSpec
from tests.engine.conftest import RecordingReporter, tiny_bert_export
from tests.stack import free_port
from workers.engine.distributed import Parallel
from workers.engine.finetune import run_finetune

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data/README.md
STEPS, STOP_AT = 6, 3
# Each rank sums its half of the batch and gloo sums the halves: the 1-process numbers up to
# float summation order, which Adam amplifies a little over the steps (fp32).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def base(en_corpus, tmp_path_factory) -> str:
    """A tiny BertForMaskedLM export with random weights; no dropout, so that 2 processes
    draw the same numbers as one."""
    return tiny_bert_export(en_corpus, tmp_path_factory.mktemp("base"), vocab_size=1000,
                            dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict[str, tuple[str, str]]]:
    """Per task, a small training file: 120 e-mails (seeded sample), 60 tagged sentences."""
    folder = tmp_path_factory.mktemp("ft-data")
    with gzip.open(DATA / "spamassassin-sample.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    random.Random(0).shuffle(records)
    spam = folder / "spam.jsonl"
    spam.write_text("".join(json.dumps({"text": r["text"][:400], "label": r["label"]}) + "\n"
                            for r in records[:120]), encoding="utf-8")
    with gzip.open(DATA / "brown-train.conll.gz", "rt", encoding="utf-8") as f:
        lines = list(itertools.islice(f, 1500))
    while lines and lines[-1].strip():
        lines.pop()
    brown = folder / "brown.conll"
    brown.write_text("".join(lines), encoding="utf-8")
    return {"text_classification": {"train": (str(spam), "jsonl")},
            "token_classification": {"train": (str(brown), "conll")}}


def _spec(task: str, adapter: dict[str, Any] | None, processes: int = 1,
          strategy: str = "ddp") -> FinetuneSpec:
    # No dropout: rank 0's masks over half a batch are not the 1-process run's over all of it.
    return FinetuneSpec.model_validate({
        "task": task, "base_model_id": "m_base", "dataset_id": "ds_data", "adapter": adapter,
        "hyperparameters": {"max_steps": STEPS, "batch_size": 8, "learning_rate": 1e-3,
                            "sequence_length": 32, "dropout": 0.0, "warmup_ratio": 0.3,
                            "precision": "fp32", "seed": 1},
        "resources": {"processes": processes, "strategy": strategy},
        "log_every": 1, "eval_every": 1000, "checkpoint_every": STOP_AT})


def _rank(rank: int, port: int, spec_json: dict[str, Any], base: str,
          data: dict[str, tuple[str, str]], out: str, strategy: str) -> None:
    """One rank: a straight run, then a run stopped at STOP_AT and its resume."""
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    parallel = Parallel(rank=rank, world=2, strategy=strategy)
    spec = FinetuneSpec.model_validate(spec_json)
    try:
        straight = RecordingReporter()
        done = run_finetune(spec, base, data, f"{out}/straight", straight, device="cpu",
                            parallel=parallel)
        first = RecordingReporter(stop_after_logs=STOP_AT)
        stopped = run_finetune(spec, base, data, f"{out}/first", first, device="cpu",
                               parallel=parallel)
        # Rank 0 alone writes checkpoints; the others resume from the files it wrote.
        checkpoint = f"{out}/first/checkpoints/step-{STOP_AT:08d}"
        second = RecordingReporter()
        resumed = run_finetune(spec, base, data, f"{out}/second", second, device="cpu",
                               resume_from=checkpoint, parallel=parallel)
        runs = {"straight": straight.logs, "first": first.logs, "second": second.logs,
                "events": [m for _, m in straight.events], "evals": straight.evals,
                "checkpoints": first.checkpoints, "stopped": [stopped.stopped, stopped.steps],
                "export": done.export_dir, "resumed_export": resumed.export_dir}
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(runs))
    finally:
        dist.destroy_process_group()


def _losses(points: list[dict[str, Any]]) -> list[float]:
    return [p["train_loss"] for p in points]


def _two_processes(spec: FinetuneSpec, base: str, data: dict[str, tuple[str, str]],
                   out: Path, strategy: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0's and rank 1's runs (see _rank)."""
    mp.spawn(_rank, args=(free_port(), spec.model_dump(mode="json"), base, data, str(out),
                          strategy), nprocs=2, join=True)
    return (json.loads((out / "rank0.json").read_text()),
            json.loads((out / "rank1.json").read_text()))


LORA = {"type": "lora", "r": 2, "dropout": 0.0}


@pytest.mark.parametrize("task,adapter,strategy", [
    ("text_classification", None, "ddp"),
    ("token_classification", None, "ddp"),
    ("text_classification", LORA, "ddp"),
    ("text_classification", None, "fsdp"),
    ("token_classification", LORA, "fsdp"),
], ids=["text", "tagging", "text-lora", "text-fsdp", "tagging-lora-fsdp"])
def test_two_processes_match_one_and_resume_exactly(base, data, tmp_path, task, adapter,
                                                    strategy):
    one = RecordingReporter()
    single = run_finetune(_spec(task, adapter), base, data[task], str(tmp_path / "one"), one,
                          device="cpu")
    main, other = _two_processes(_spec(task, adapter, processes=2, strategy=strategy), base,
                                 data[task], tmp_path, strategy)

    # The same per-step losses as 1 process at the same global batch (8 examples).
    assert len(main["straight"]) == STEPS
    assert _losses(main["straight"]) == pytest.approx(_losses(one.logs), rel=TOLERANCE)
    assert [p["tokens_seen"] for p in main["straight"]] == \
        [p["tokens_seen"] for p in one.logs]
    assert main["evals"][-1]["eval_loss"] == pytest.approx(one.evals[-1]["eval_loss"],
                                                           rel=TOLERANCE)
    assert any(e.startswith("training on 2 processes (gloo), each on its slice of every "
                            "batch") for e in main["events"])
    # Only rank 0 reports, checkpoints and exports (and scores the export).
    assert other["straight"] == other["evals"] == other["events"] == []
    assert other["checkpoints"] == [] and other["export"] is None
    export = load_file(str(Path(main["export"]) / "model.safetensors"))
    alone = load_file(str(Path(single.export_dir) / "model.safetensors"))  # type: ignore
    assert export.keys() == alone.keys()
    assert all(export[k].allclose(alone[k], rtol=1e-4, atol=1e-6) for k in alone)
    # Stop at STOP_AT, resume with 2 processes: exactly the straight 2-process curve.
    assert main["stopped"] == [True, STOP_AT]
    assert [s for s, _ in main["checkpoints"]] == [STOP_AT]
    assert _losses(main["first"]) + _losses(main["second"]) == _losses(main["straight"])
    resumed = load_file(str(Path(main["resumed_export"]) / "model.safetensors"))
    assert all(resumed[k].equal(export[k]) for k in export)


def _rank_once(rank: int, port: int, spec_json: dict[str, Any], base: str,
               data: dict[str, tuple[str, str]], out: str, strategy: str) -> None:
    """One rank of one run: rank 0 writes what it exported and its best step."""
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        result = run_finetune(FinetuneSpec.model_validate(spec_json), base, data, out,
                              RecordingReporter(), device="cpu",
                              parallel=Parallel(rank=rank, world=2, strategy=strategy))
        if rank == 0:
            Path(f"{out}/result.json").write_text(json.dumps(
                {"export": result.export_dir, "best_step": result.best_step,
                 "steps": result.steps}))
    finally:
        dist.destroy_process_group()


def test_fsdp_early_stopping_exports_the_best_eval(base, data, tmp_path):
    """The best eval's weights are kept as shards and become the export, as in 1 process
    (an eval_loss to maximise: the first eval is the best, the run stops 2 evals later)."""
    task = "text_classification"
    spec = _spec(task, None).model_dump(mode="json")
    spec.update(eval_every=1, early_stopping={"metric": "eval_loss", "mode": "max",
                                              "patience": 2})
    single = run_finetune(FinetuneSpec.model_validate(spec), base, data[task],
                          str(tmp_path / "one"), RecordingReporter(), device="cpu")
    assert single.best_step is not None and single.best_step < single.steps < STEPS
    spec["resources"] = {"processes": 2, "strategy": "fsdp"}
    mp.spawn(_rank_once, args=(free_port(), spec, base, data[task], str(tmp_path / "two"),
                               "fsdp"), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (two["best_step"], two["steps"]) == (single.best_step, single.steps)
    ours = load_file(str(Path(two["export"]) / "model.safetensors"))
    theirs = load_file(str(Path(single.export_dir) / "model.safetensors"))  # type: ignore
    assert all(ours[k].allclose(theirs[k], rtol=1e-4, atol=1e-6) for k in theirs)
