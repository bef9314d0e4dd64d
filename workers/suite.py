"""Runs one attempt of an evaluate job: every cell of its suite (a task trained one way:
the baseline, the model, the model to compare, random init) that no earlier attempt
finished, each recorded as soon as it is done, so a worker killed mid-suite costs only the
cells it was running. The table is made from the recorded cells (jobspec/evaluation.py).

resources.processes cells run at once, each in a thread of this worker process (torch
and the tokenizers release the GIL in their kernels, so two fine-tunes share the cores as
two processes would), all polling the job's cancel and pause flags through one reporter.
"""

import logging
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from jobspec import FinetuneSpec, parse_spec
from jobspec import evaluation as ev
from jobspec.metrics import EvalPoint, TrainPoint
from service.db import session_scope
from service.domain import attempts
from service.domain.attempts import Stored, SuiteInputs
from service.storage import ObjectStore
from workers.db_reporter import DbReporter, with_db_retry
from workers.engine import ConfigError, CorpusError
from workers.engine.evaluate_cell import run_cell

log = logging.getLogger("cloze.worker")


class CellReporter:
    """The job's reporter as one cell sees it: its events named for the cell, its evals as
    events (the job's curve is not any one fine-tune's), no checkpoints (a cell cut short
    is redone from its start: cells are minutes, and the table needs only final scores)."""

    def __init__(self, job: DbReporter, label: str) -> None:
        self.job, self.label = job, label

    def event(self, level: str, message: str) -> None:
        self.job.event(level, f"{self.label}: {message}")

    def log(self, point: TrainPoint) -> None:
        pass  # the heartbeat thread keeps the job alive; record_cell moves its progress

    def eval(self, point: EvalPoint) -> None:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in point.items()
                           if k != "step" and isinstance(v, int | float))
        self.event("info", f"eval at step {point['step']}: {scores}")

    def checkpoint(self, step: int, directory: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def should_stop(self) -> bool:
        return self.job.should_stop()

    def pausing(self) -> bool:
        return self.job.pausing()


@with_db_retry
def _inputs(job_id: str, spec: ev.EvaluateSpec) -> SuiteInputs:
    with session_scope() as s:
        return attempts.suite_inputs(s, job_id, spec)


@with_db_retry
def _record(job_id: str, cell: ev.Cell) -> bool:
    with session_scope() as s:
        return attempts.record_cell(s, job_id, cell)


class _Downloads:
    """Each model and each task's files, fetched once per attempt by the first cell that
    needs them (cells in threads may ask at once)."""

    def __init__(self, store: ObjectStore, inputs: SuiteInputs, work: Path,
                 reporter: DbReporter) -> None:
        self.store, self.inputs, self.work, self.reporter = store, inputs, work, reporter
        self.lock = threading.Lock()
        self.models: dict[str, str] = {}
        self.data: dict[int, dict[str, Any]] = {}

    def model(self, variant: str) -> str:
        with self.lock:
            if variant not in self.models:
                stored = self.inputs.models.get(variant)
                if stored is None:
                    field = "compare_model_id" if variant == ev.COMPARE_MODEL else "model_id"
                    raise ConfigError(f"the model of {field} no longer exists")
                target = self.work / "models" / variant
                self.reporter.event("info", f"downloading model {stored.id}")
                self.store.get_dir(stored.key, target)
                self.models[variant] = str(target)
            return self.models[variant]

    def task_data(self, index: int) -> dict[str, Any]:
        with self.lock:
            if index not in self.data:
                stored: dict[str, Stored] = self.inputs.tasks[index]
                if "train" not in stored:
                    raise CorpusError(f"the dataset of suite.{index} no longer exists")
                data = {}
                for split, item in stored.items():
                    local = self.work / "data" / str(index) / f"{split}.{item.format}"
                    self.store.get_file(item.key, local)
                    data[split] = (str(local), item.format, item.tag_column)
                self.data[index] = data
            return self.data[index]


def run_suite(job_id: str, number: int, spec: ev.EvaluateSpec, store: ObjectStore,
              reporter: DbReporter, work: Path) -> bool:
    """Every unfinished cell; True once all are recorded, False if the job was asked to
    stop (cancel or pause) first. A cell's failure fails the attempt (its recorded cells
    stay: a retry does not redo them)."""
    inputs = _inputs(job_id, spec)
    names = ev.task_names(spec)
    done = {(c.task_index, c.variant) for c in inputs.cells}
    todo = [(i, v) for i in range(len(spec.tasks)) for v in spec.variants()
            if (i, v) not in done]
    total = len(spec.tasks) * len(spec.variants())
    if done:
        reporter.event("info", f"attempt {number}: {len(done)} of {total} cells were finished "
                               "by an earlier attempt and are not redone")
    downloads = _Downloads(store, inputs, work, reporter)

    def cell(index: int, variant: str) -> bool:
        """One cell, recorded; False if it was stopped."""
        if reporter.should_stop():
            return False
        label = f"{names[index]} / {variant.replace('_', ' ')}"
        fine = parse_spec(ev.finetune_spec(spec, index))
        assert isinstance(fine, FinetuneSpec)
        model_dir = downloads.model(ev.COMPARE_MODEL if variant == ev.COMPARE_MODEL
                                    else ev.MODEL)
        started = time.monotonic()
        result = run_cell(variant, fine, downloads.task_data(index), model_dir,
                          str(work / "cells" / f"{index}-{variant}"),
                          CellReporter(reporter, label))
        shutil.rmtree(work / "cells" / f"{index}-{variant}", ignore_errors=True)
        if result is None:
            return False
        recorded = ev.Cell(task_index=index, variant=variant, metrics=result.metrics,
                           steps=result.steps, seconds=round(time.monotonic() - started, 1))
        _record(job_id, recorded)
        metric = ev.headline(spec.tasks[index].task, result.metrics)
        score = result.metrics.get(metric)
        reporter.event("info", f"{label}: " + (f"test {metric} {score:.4f}"
                                              if score is not None else "no baseline")
                       + f" ({recorded.seconds:.0f} s)")
        return True

    parallel = max(1, min(spec.resources.processes, len(todo)))
    if parallel == 1:
        return all(cell(i, v) for i, v in todo)  # stops at the first stopped cell
    with ThreadPoolExecutor(parallel, thread_name_prefix=f"{job_id}-cell") as pool:
        futures: list[Future[bool]] = [pool.submit(cell, i, v) for i, v in todo]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:  # a failure: the cells not started yet never start
            future.cancel()
        return all(f.result() for f in futures if not f.cancelled()) and \
            not any(f.cancelled() for f in futures)
