"""Runs one attempt of a job: claim the row, get the data, train (resuming if an earlier
attempt left a checkpoint), publish the model, record the end.

The database is the record of a job. Celery over Redis delivers at least once; the claim
below is a conditional UPDATE, so only one delivery ever trains, and the attempt counter
stops a job that kills its worker every time from looping forever.
"""

import json
import logging
import platform
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobspec import EvaluateSpec, FinetuneSpec, PretrainSpec, SpecError, parse_spec
from jobspec import evaluation as ev
from jobspec.model_facts import model_details
from jobspec.shard_key import tokenized_prefix
from service import logs
from service.db import session_scope
from service.domain import attempts, calibration, lifecycle, models, quotas
from service.domain.attempts import Stored
from service.domain.jobs import checkpoints_prefix
from service.domain.lifecycle import Claim, JobStatus
from service.queue import enqueue_training
from service.scratch import scratch_dir
from service.settings import get_settings
from service.storage import ObjectStore, get_store
from workers.db_reporter import DbReporter, with_db_retry
from workers.engine import (
    ConfigError,
    CorpusError,
    EngineError,
    StopRequested,
    TooBig,
    check_fits,
    estimate_pretrain_bytes,
    prepare_data,
    run_pretraining,
    verify_checkpoint,
)
from workers.engine.loop import LoopResult, pick_device
from workers.engine.pretrain import PretrainResult
from workers.multiprocess import run_multiprocess

log = logging.getLogger("cloze.worker")


class Permanent(Exception):
    """A failure another attempt cannot heal: bad data, bad config, too big for a worker."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Attempt:
    job_id: str
    number: int
    owner: str
    spec: dict[str, Any]
    data: dict[str, Stored]  # split ("train", "valid", "test") -> dataset
    base_model: Stored | None  # fine-tuning starts from it; format = its architecture

    @property
    def dataset(self) -> Stored:
        return self.data["train"]


def claim(job_id: str) -> Attempt | None:
    """Move the job from queued to running as a new attempt; None if this delivery is a
    duplicate (already running or finished) or the job has used up its attempts."""
    with session_scope() as s:
        if lifecycle.claim(s, job_id, max_attempts=get_settings().max_attempts) \
                is not Claim.CLAIMED:
            return None
        got = attempts.inputs(s, job_id)
        return Attempt(job_id=job_id, number=got.number, owner=got.owner, spec=got.spec,
                       data=got.data, base_model=got.base_model)


@with_db_retry
def finish(job_id: str, status: JobStatus, **values: Any) -> bool:
    """Record the end; conditional on `running` so exactly one terminal state wins."""
    with session_scope() as s:
        return lifecycle.finish(s, job_id, status, **values)


@with_db_retry
def _pause_reached(job_id: str) -> bool:
    """running -> paused (its step checkpointed); the worker is free for the next job."""
    with session_scope() as s:
        return lifecycle.pause_reached(s, job_id)


@with_db_retry
def _requeue(job_id: str) -> None:
    with session_scope() as s:
        lifecycle.requeue(s, job_id)
    enqueue_training(job_id)


class Heartbeat(threading.Thread):
    """Writes the attempt's heartbeat while it lives; the reaper re-queues it if it stops."""

    def __init__(self, job_id: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.interval = job_id, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with session_scope() as s:
                    lifecycle.heartbeat(s, self.job_id)
            except Exception:  # the database is down: the next beat tries again
                log.warning("%s: heartbeat failed", self.job_id)


def run_job(job_id: str) -> None:
    with logs.log_context(job=job_id):  # every log line of this attempt names the job
        _run_job(job_id)


def _run_job(job_id: str) -> None:
    attempt = claim(job_id)
    if attempt is None:
        log.info("%s: not claimable (a duplicate delivery, cancelled or finished); skipping",
                 job_id)
        return
    settings = get_settings()
    store = get_store()
    reporter = DbReporter(job_id, store)
    heartbeat = Heartbeat(job_id, settings.heartbeat_interval_s)
    heartbeat.start()
    try:
        # A killed worker's is collected (service/scratch.py).
        with scratch_dir(f"{job_id}-") as work:
            _attempt(attempt, store, reporter, work)
    except Permanent as exc:
        _fail(job_id, reporter, exc.code, exc.message)
    except Exception as exc:
        log.exception("%s: attempt %d failed", job_id, attempt.number)
        message = f"attempt {attempt.number} failed ({exc.__class__.__name__})"
        if attempt.number < settings.max_attempts:
            reporter.event("warning", f"{message}; retrying from the last checkpoint")
            _requeue(job_id)
        else:
            _fail(job_id, reporter, "internal_error",
                  f"{message}; gave up after {attempt.number} attempts (see the worker log)")
    finally:
        heartbeat.stopped.set()


def _fail(job_id: str, reporter: DbReporter, code: str, message: str) -> None:
    reporter.event("error", message)
    finish(job_id, JobStatus.FAILED, error_code=code, error_message=message)


def _attempt(attempt: Attempt, store: ObjectStore, reporter: DbReporter, work: Path) -> None:
    try:
        spec = parse_spec(attempt.spec)
        if isinstance(spec, EvaluateSpec):
            _evaluate(attempt, spec, store, reporter, work)
            return
        if "train" not in attempt.data:
            raise CorpusError("the job's dataset no longer exists")
        reporter.keep_checkpoints = spec.keep_checkpoints
        resume_from = _resume_point(attempt, store, reporter, work / "resume")
        if isinstance(spec, FinetuneSpec):
            published = _finetune(attempt, spec, store, reporter, work, resume_from)
        else:
            published = _pretrain(attempt, spec, store, reporter, work, resume_from)
    except SpecError as exc:
        raise Permanent("bad_config", exc.message) from None
    except TooBig as exc:
        raise Permanent("too_big", str(exc)) from None
    except (CorpusError, ConfigError) as exc:
        raise Permanent("bad_data" if isinstance(exc, CorpusError) else "bad_config",
                        str(exc)) from None
    except MemoryError:
        raise Permanent("out_of_memory", "the job ran out of memory on its worker; use a "
                        "smaller model, batch_size or micro_batch_size") from None
    except EngineError as exc:  # e.g. divergence: the same run would diverge again
        raise Permanent("training_error", str(exc)) from None
    except Exception as exc:
        if exc.__class__.__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            raise Permanent("out_of_memory", "the job ran out of GPU memory; use a smaller "
                            "model, batch_size or micro_batch_size") from None
        raise
    if published is None:
        _stopped(attempt, reporter)
        return
    if finish(attempt.job_id, JobStatus.SUCCEEDED, model_id=published):
        reporter.event("info", f"model {published} is ready")
    else:  # the reaper gave the job to another attempt meanwhile: that one's model counts
        with session_scope() as s:
            attempts.discard_model(s, published)
        models.delete_files(store=store, model_id=published)


def _stopped(attempt: Attempt, reporter: DbReporter) -> None:
    """The run stopped when asked: paused, or cancelled (a pause that a cancel overtook,
    even after the checkpoint, ends cancelled)."""
    if reporter.pausing() and _pause_reached(attempt.job_id):
        return
    reporter.event("info", JobStatus.CANCELLED.value)
    finish(attempt.job_id, JobStatus.CANCELLED)


def _evaluate(attempt: Attempt, spec: EvaluateSpec, store: ObjectStore, reporter: DbReporter,
              work: Path) -> None:
    """Every cell of the suite not done yet (workers/suite.py); the table goes onto the
    evaluated model's card once the last is done."""
    from workers.suite import run_suite  # only evaluate jobs load the baselines

    if not run_suite(attempt.job_id, attempt.number, spec, store, reporter, work):
        _stopped(attempt, reporter)
        return
    # The card first: a client that sees the job succeeded finds the table on the card. (An
    # attempt that loses the race to finish wrote the same table under the same heading.)
    with session_scope() as s:
        table = ev.table(spec, attempts.cells(s, attempt.job_id))
    carded = False
    try:
        with session_scope() as s:
            models.append_card_section(
                session=s, store=store, model_id=spec.model_id,
                section=f"## Evaluation ({attempt.job_id})\n\n"
                        + ev.markdown(table, compare=spec.compare_model_id is not None))
        carded = True
    except Exception:  # the table is the job's; the card is a copy of it
        log.warning("%s: could not add the table to the model card", attempt.job_id,
                    exc_info=True)
        reporter.event("warning", f"the table could not be added to {spec.model_id}'s model "
                                  "card (see the worker log); it is in the job")
    if finish(attempt.job_id, JobStatus.SUCCEEDED):
        reporter.event("info", f"evaluation done: {len(table.rows)} tasks" + (
            f", the table added to {spec.model_id}'s model card" if carded else ""))


def _pretrain(attempt: Attempt, spec: PretrainSpec, store: ObjectStore, reporter: DbReporter,
              work: Path, resume_from: str | None) -> str | None:
    """Pretrain (or continue a base model) on the corpus; the new model's id, or None if
    cancelled."""
    started = time.monotonic()
    base_dir = None
    if spec.base_model_id is not None:
        base_dir = _download_base(attempt, store, reporter, work)
    else:  # a shape too big for this worker fails now, not after tokenizing
        device = pick_device(None)
        # Per process; the processes of a CPU job share this machine's memory.
        need = estimate_pretrain_bytes(spec) * (
            spec.resources.processes if device.type == "cpu" else 1)
        check_fits(need, device)
    try:
        data_dir = _prepared_data(attempt, spec, store, reporter, work, base_dir)
    except StopRequested:  # cancelled while the corpus was being tokenized
        return None
    base = None if base_dir is None else str(base_dir)
    if spec.resources.processes > 1:  # under torchrun, on this machine's GPUs or cores
        result = run_multiprocess(attempt.job_id, spec, str(data_dir), str(work / "ranks"),
                                  reporter, pick_device(None), resume_from, base)
    else:
        result = run_pretraining(spec, str(data_dir), str(work / "run"), reporter,
                                 resume_from=resume_from, base_model_dir=base)
    assert isinstance(result, PretrainResult)
    if result.stopped or result.export_dir is None:
        return None
    published = _publish(attempt, store, Path(result.export_dir), task=spec.pipeline_task,
                         architecture=spec.model.architecture, details=model_details(
                             spec.stored_spec(), num_parameters=result.num_parameters,
                             tokenizer=result.tokenizer_info, corpus=result.corpus_info,
                             steps=result.steps, tokens_seen=result.tokens_seen,
                             final_eval=result.final_eval), best_step=result.best_step)
    # Calibration rows are the speed of one process on this kind of worker.
    if resume_from is None and spec.resources.processes == 1:
        _calibrate(spec.model.architecture, spec.objective or "mlm", result, started)
    return published


def worker_kind(device: torch.device) -> str:
    """This worker's hardware, as calibration rows name it: jobs on the same kind train at
    the same speed."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"cpu {model} x{torch.get_num_threads()} threads"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _calibrate(architecture: str, objective: str, result: LoopResult, started: float
               ) -> None:
    """Record the whole loop's measured throughput, and the rest of the attempt since
    `started` (monotonic) as setup, for the time estimates of later jobs (a fresh run only:
    a resumed attempt's clock misses the steps before)."""
    if not result.elapsed_seconds or not result.tokens_seen or not result.num_parameters:
        return
    setup = max(0.0, time.monotonic() - started - result.elapsed_seconds)
    try:
        with session_scope() as s:
            calibration.record(s, worker_kind=worker_kind(pick_device(None)),
                               architecture=architecture, objective=objective,
                               parameters=result.num_parameters,
                               tokens_per_second=result.tokens_seen / result.elapsed_seconds,
                               setup_seconds=setup)
    except Exception:  # a figure for estimates: never a reason to fail the job
        log.warning("could not record the measured throughput", exc_info=True)


def _download_base(attempt: Attempt, store: ObjectStore, reporter: DbReporter,
                   work: Path) -> Path:
    if attempt.base_model is None:
        raise ConfigError("the base model no longer exists")
    base = work / "base"
    reporter.event("info", f"downloading base model {attempt.base_model.id}")
    store.get_dir(attempt.base_model.key, base)
    return base


def _finetune(attempt: Attempt, spec: FinetuneSpec, store: ObjectStore, reporter: DbReporter,
              work: Path, resume_from: str | None) -> str | None:
    """Fine-tune the base model on the labelled data; returns the new model's id or None."""
    from workers.engine.finetune import FinetuneResult, run_finetune

    started = time.monotonic()
    base = _download_base(attempt, store, reporter, work)
    data = {}
    for split, stored in attempt.data.items():
        local = work / f"{split}.{stored.format}"
        store.get_file(stored.key, local)
        data[split] = (str(local), stored.format, stored.tag_column)
    if spec.resources.processes > 1:  # under torchrun, as pretraining (_pretrain)
        result = run_multiprocess(attempt.job_id, spec, data, str(work / "ranks"), reporter,
                                  pick_device(None), resume_from, str(base))
    else:
        result = run_finetune(spec, str(base), data, str(work / "run"), reporter,
                              resume_from=resume_from)
    assert isinstance(result, FinetuneResult)
    if result.stopped or result.export_dir is None:
        return None
    assert attempt.base_model is not None
    published = _publish(attempt, store, Path(result.export_dir), task=spec.pipeline_task,
                         architecture=attempt.base_model.format, details=model_details(
                             spec.stored_spec(), labels=result.labels, steps=result.steps,
                             final_eval=result.final_eval, test=result.test_metrics,
                             num_parameters=result.num_parameters,
                             trainable_parameters=result.trainable_parameters),
                         best_step=result.best_step)
    if resume_from is None and spec.resources.processes == 1:
        _calibrate(attempt.base_model.format, spec.task, result, started)
    return published


def _prepared_data(attempt: Attempt, spec: PretrainSpec, store: ObjectStore,
                   reporter: DbReporter, work: Path, base_dir: Path | None) -> Path:
    """Token shards for this dataset and tokenizer, made once and reused by later jobs."""
    prefix = tokenized_prefix(attempt.dataset.id, spec)
    local = work / "data"
    if store.exists(f"{prefix}/meta.json"):  # meta.json is written last: the set is whole
        reporter.event("info", "reusing tokenized data from an earlier job on this dataset "
                               f"({prefix}); skipping tokenization")
        store.get_dir(prefix, local)
        # Counted once (stored before they were counted, or by a worker that died first).
        _count_tokenized(attempt, prefix, _dir_bytes(local))
        return local
    corpus = work / f"corpus.{attempt.dataset.format}"
    reporter.event("info", "downloading the dataset")
    store.get_file(attempt.dataset.key, corpus)
    prepare_data(spec, str(corpus), attempt.dataset.format, str(local), reporter,
                 None if base_dir is None else str(base_dir))
    corpus.unlink()
    size = _dir_bytes(local)
    if not _room_for(attempt.owner, size):  # a cache: the job trains from its own copy
        reporter.event("warning", f"token shards not stored ({size / 1e6:.1f} MB would pass "
                                  "your storage quota): this job trains from its own copy, "
                                  "and a later job on this dataset tokenizes it again")
        return local
    store.put_dir(local, prefix, last="meta.json")
    _count_tokenized(attempt, prefix, size)
    return local


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@with_db_retry
def _room_for(owner: str, size: int) -> bool:
    quota = get_settings().storage_quota_bytes
    if not quota:
        return True
    with session_scope() as s:
        return quotas.used_bytes(s, owner) + size <= quota


@with_db_retry
def _count_tokenized(attempt: Attempt, prefix: str, size: int) -> None:
    with session_scope() as s:
        quotas.record_tokenized(s, prefix=prefix, dataset_id=attempt.dataset.id, size=size)


def _resume_point(attempt: Attempt, store: ObjectStore, reporter: DbReporter,
                  local: Path) -> str | None:
    """The newest checkpoint of an earlier attempt that verifies, downloaded; None if none.

    Checkpoints that fail verification are dropped (the previous one is tried), torn
    uploads with no record are removed, and metric rows past the resume point are deleted
    so the curve continues with exactly one row per step.
    """
    if attempt.number == 1:
        return None
    with session_scope() as s:
        known = attempts.checkpoints(s, attempt.job_id)
    recorded = {p for _, _, p in known}
    root = checkpoints_prefix(attempt.job_id)
    for name in {rel.split("/", 1)[0] for rel in store.list(root)}:
        if f"{root}/{name}" not in recorded:
            store.delete_prefix(f"{root}/{name}")  # a torn upload from a dead attempt
    resume_step, resume_dir = 0, None
    for ckpt_id, step, prefix in known:
        target = local / f"step-{step}"
        store.get_dir(prefix, target)
        if verify_checkpoint(str(target)):
            resume_step, resume_dir = step, str(target)
            break
        reporter.event("warning", f"checkpoint at step {step} failed verification (missing "
                                  "or corrupted files); using the previous one")
        shutil.rmtree(target, ignore_errors=True)
        store.delete_prefix(prefix)
        with session_scope() as s:
            attempts.drop_checkpoint(s, ckpt_id)
    with session_scope() as s:
        attempts.rewind_to(s, attempt.job_id, resume_step)
    if resume_dir:
        reporter.event("info", f"attempt {attempt.number}: resuming from the checkpoint at "
                               f"step {resume_step}")
    else:
        reporter.event("info", f"attempt {attempt.number}: no usable checkpoint; "
                               "starting from the beginning")
    return resume_dir


def _publish(attempt: Attempt, store: ObjectStore, export: Path, *, task: str,
             architecture: str, details: dict[str, Any], best_step: int | None) -> str:
    """The job's model; with early stopping, the best eval's step says which one it is."""
    with session_scope() as s:
        row = models.publish(session=s, store=store, export_dir=export, owner=attempt.owner,
                             name=attempt.spec.get("name") or attempt.job_id,
                             job_id=attempt.job_id, task=task, architecture=architecture,
                             mask_token=_mask_token(export), details=details,
                             checkpoint_step=best_step)
        return row.id


def _mask_token(export: Path) -> str | None:
    path = export / "tokenizer_config.json"
    token = json.loads(path.read_text()).get("mask_token") if path.exists() else None
    return token.get("content") if isinstance(token, dict) else token
