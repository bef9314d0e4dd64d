"""Multi-process jobs (resources.processes > 1): the job's run under torchrun.

The worker (Celery's pool process) claims the job and gets its data and resume checkpoint
as for any job, then runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m workers.multiprocess REQ

and waits. Each rank runs run_pretraining or run_finetune on its slice of every batch (gloo
on CPUs, NCCL with one GPU each; workers/engine/distributed.py). Rank 0 reports to the
database, uploads checkpoints and writes the export and a result file, which the worker
reads to publish the model as usual. A rank that dies makes torchrun end the others and
exit non-zero: the attempt fails like any crashed attempt, and the job is retried from its
last checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from jobspec import FinetuneSpec, PretrainSpec, parse_spec
from service import logs
from service.storage import get_store
from workers.db_reporter import DbReporter
from workers.engine import ConfigError, CorpusError, EngineError, TooBig, run_pretraining
from workers.engine.distributed import Parallel, RankReporter, init_from_env
from workers.engine.finetune import FinetuneResult, run_finetune
from workers.engine.pretrain import PretrainResult

REQUEST, RESULT = "request.json", "result.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up now, not between fork and exec, where another thread may hold the loader's lock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
# What rank 0 raised, raised again by the worker, which maps each to the job's error.
ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls for cls in (ConfigError, CorpusError, EngineError, TooBig, MemoryError,
                                  torch.OutOfMemoryError)}


class RanksFailed(Exception):
    """A rank died (killed, crashed): torchrun ended the run; the job is retried."""


def capacity(device: torch.device) -> tuple[int, str]:
    """How many processes this worker can hold: the GPUs its pool process sees (cloze
    worker --gpus-per-job), else its CPU cores."""
    if device.type == "cuda":
        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores"


def run_multiprocess(job_id: str, spec: PretrainSpec | FinetuneSpec, data: Any, workdir: str,
                     reporter: DbReporter, device: torch.device, resume_from: str | None = None,
                     base_model_dir: str | None = None) -> PretrainResult | FinetuneResult:
    """run_pretraining (data: the prepared data's directory) or run_finetune (data: split
    name -> (path, format[, tag column])) on spec.resources.processes processes of this
    machine. reporter: the worker's DbReporter, told how a stop ended (rank 0 saw the
    flags)."""
    processes = spec.resources.processes
    available, unit = capacity(device)
    if processes > available:
        hint = (f"a worker started with --gpus-per-job {processes}" if device.type == "cuda"
                else "a machine with more cores")
        raise ConfigError(f"resources.processes ({processes}) is more than this worker's "
                          f"{available} {unit}; lower it, or use {hint}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    request = {"job_id": job_id, "spec": spec.model_dump(mode="json"), "data": data,
               "workdir": str(work / "run"), "resume_from": resume_from,
               "base_model_dir": base_model_dir}
    (work / REQUEST).write_text(json.dumps(request), encoding="utf-8")
    env = dict(os.environ)
    if device.type == "cpu":  # the cores shared out, not each rank on all of them
        env["OMP_NUM_THREADS"] = str(max(1, available // processes))
    code = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={processes}", "--max-restarts=0", "-m", "workers.multiprocess",
         str(work)],
        env=env, preexec_fn=_die_with_parent, check=False).returncode
    result = json.loads((work / RESULT).read_text()) if (work / RESULT).exists() else {}
    if "error" in result:
        raise ERRORS[result["error"]["type"]](result["error"]["message"])
    if code != 0 or "result" not in result:
        raise RanksFailed(f"torchrun exited with status {code}")
    if result["result"]["stopped"]:
        reporter.stopped_elsewhere(pausing=result["pausing"])
    if isinstance(spec, FinetuneSpec):
        return FinetuneResult(**result["result"])
    return PretrainResult(**result["result"])


def _die_with_parent() -> None:
    """torchrun ends when the worker process does, even by kill -9 (SIGTERM: it then ends
    its ranks), and a rank when torchrun does (torchrun starts each in a session of its
    own): none trains on beside the job's next attempt."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _rank_main(work: Path) -> None:
    """One rank, started by torchrun: train, and on rank 0 write the result file."""
    _die_with_parent()  # a rank ends with its torchrun agent
    logs.configure()  # rank 0's events in the worker's output, as for a 1-process job
    request = json.loads((work / REQUEST).read_text())
    with logs.log_context(job=request["job_id"]):
        _train_rank(work, request)


def _train_rank(work: Path, request: dict[str, Any]) -> None:
    spec = parse_spec(request["spec"])
    assert isinstance(spec, PretrainSpec | FinetuneSpec)
    parallel, device = init_from_env(spec.resources.strategy)
    inner = None
    if parallel.main:
        inner = DbReporter(request["job_id"], get_store())
        inner.keep_checkpoints = spec.keep_checkpoints
    reporter = RankReporter(parallel, inner)
    try:
        result = _run(spec, request, reporter, device, parallel)
    except tuple(ERRORS.values()) as exc:
        if parallel.main:
            name = type(exc).__name__
            _write_result(work, {"error": {"type": name if name in ERRORS else "EngineError",
                                           "message": str(exc)}})
        raise
    finally:
        torch.distributed.destroy_process_group()
    if parallel.main:
        _write_result(work, {"result": vars(result), "pausing": reporter.pausing()})


def _run(spec: PretrainSpec | FinetuneSpec, request: dict[str, Any], reporter: RankReporter,
         device: torch.device, parallel: Parallel) -> PretrainResult | FinetuneResult:
    if isinstance(spec, FinetuneSpec):
        data = {split: tuple(given) for split, given in request["data"].items()}
        return run_finetune(spec, request["base_model_dir"], data, request["workdir"],
                            reporter, device=str(device), resume_from=request["resume_from"],
                            parallel=parallel)
    return run_pretraining(spec, request["data"], request["workdir"], reporter,
                           device=str(device), resume_from=request["resume_from"],
                           base_model_dir=request["base_model_dir"], parallel=parallel)


def _write_result(work: Path, content: dict[str, Any]) -> None:
    tmp = work / f"{RESULT}.tmp"
    tmp.write_text(json.dumps(content), encoding="utf-8")
    tmp.replace(work / RESULT)  # whole or absent


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
