"""The engine's Reporter, backed by the database and object storage."""

import functools
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import psutil
import torch
from sqlalchemy.exc import OperationalError

from jobspec.metrics import EvalPoint, TrainPoint
from service import sweeper
from service.db import session_scope
from service.domain import attempts, checkpoint_quota
from service.domain.jobs import checkpoints_prefix
from service.settings import get_settings
from service.storage import ObjectStore

log = logging.getLogger("cloze.worker")

P = ParamSpec("P")
R = TypeVar("R")


def with_db_retry(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry a database write while the database is down (a restart, a failover), for up to
    db_retry_s, so a blip costs a pause, not the job or its metric rows."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        deadline = time.monotonic() + get_settings().db_retry_s
        delay = 0.5
        while True:
            try:
                return fn(*args, **kwargs)
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
                log.warning("database unavailable; retrying %s in %.1f s", fn.__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


def device_memory_bytes() -> int:
    """The job's peak CUDA memory where it trains on a GPU (a worker process runs one job),
    else the process's resident memory: what GET /metrics shows as device memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return int(psutil.Process().memory_info().rss)


class DbReporter:
    def __init__(self, job_id: str, store: ObjectStore) -> None:
        self.job_id, self.store = job_id, store
        self._last_poll = 0.0
        self._stop = False
        self._pausing = False  # the stop asked for is a pause, not a cancel
        self._latest: dict[str, Any] = {}
        self._last_log: tuple[int, int] | None = None  # (step, tokens_seen) of the last point
        # The job spec's keep_checkpoints, once the spec is read; None keeps every one.
        self.keep_checkpoints: int | None = None
        # Checkpoints in a row not stored because they would pass the storage quota.
        self._skipped = 0

    @with_db_retry
    def event(self, level: str, message: str) -> None:
        log.log(logging.getLevelName(level.upper()), "%s: %s", self.job_id, message)
        with session_scope() as s:
            attempts.record_event(s, self.job_id, level, message)

    def log(self, point: TrainPoint) -> None:
        # For GET /metrics, on the job row (written with the step), not in the curve.
        gauges: dict[str, float] = {"device_memory_bytes": device_memory_bytes()}
        if (seconds := self._step_seconds(point)) is not None:
            gauges["step_seconds"] = seconds
        if "mfu" in point:
            gauges["mfu"] = point["mfu"]
        self._record_train(point, gauges)

    @with_db_retry
    def _record_train(self, point: TrainPoint, gauges: dict[str, float]) -> None:
        with session_scope() as s:
            fields = attempts.record_train(s, self.job_id, point, gauges)
        self._latest.update(fields)  # what the next checkpoint records

    def _step_seconds(self, point: TrainPoint) -> float | None:
        """A step's mean time over the window since the last point: its tokens per step at
        its throughput (the first point of an attempt: the run's mean tokens per step)."""
        step, seen, rate = point["step"], point["tokens_seen"], point.get("tokens_per_second")
        last, self._last_log = self._last_log, (step, seen)
        if last is not None and step > last[0]:
            per_step = (seen - last[1]) / (step - last[0])
        else:
            per_step = seen / step if step else 0
        return per_step / rate if rate and per_step else None

    def eval(self, point: EvalPoint) -> None:
        self._record_eval(point)
        sweeper.after_trial_event(self.job_id)  # a sweep's trial: prune it now if it lags

    @with_db_retry
    def _record_eval(self, point: EvalPoint) -> None:
        with session_scope() as s:
            fields = attempts.record_eval(s, self.job_id, point)
        self._latest.update(fields)

    def checkpoint(self, step: int, directory: str) -> None:
        prefix = f"{checkpoints_prefix(self.job_id)}/step-{step:08d}"
        src = Path(directory)
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        # Within the owner's storage quota, or not stored at all: the job trains on.
        room = self._room_for(size)
        if not room.fits:
            shutil.rmtree(src, ignore_errors=True)
            if not self._skipped:  # once until one is stored again: not at every step
                self.event("warning", checkpoint_quota.skipped(step, size, room,
                                                               self._newest_checkpoint()))
            self._skipped += 1
            return
        if room.prune_first and self.keep_checkpoints is not None:
            self._prune(self.keep_checkpoints - 1)  # the ones this checkpoint replaces
        # The manifest goes last: a checkpoint without one is incomplete and never used.
        size = self.store.put_dir(src, prefix, last="manifest.json")
        digest = hashlib.sha256((src / "manifest.json").read_bytes()).hexdigest()
        self._record_checkpoint(step, prefix, size, digest)
        shutil.rmtree(src, ignore_errors=True)
        again = f"; stored again after {self._skipped} not stored for the storage quota" \
            if self._skipped else ""
        self._skipped = 0
        self.event("info", f"checkpoint saved at step {step} ({size / 1e6:.1f} MB){again}")
        if self.keep_checkpoints is not None:
            self._prune(self.keep_checkpoints)

    def _prune(self, keep: int) -> None:
        # The rows go first (nothing offers or resumes from a checkpoint without one), then
        # the files; files left by a crash in between are removed on resume.
        gone = self._drop_checkpoint_rows(keep)
        for _, old_prefix in gone:
            self.store.delete_prefix(old_prefix)
        if gone:
            self.event("info", f"deleted {len(gone)} older checkpoint(s) (keep_checkpoints "
                               f"{self.keep_checkpoints}): step "
                               f"{', '.join(str(old_step) for old_step, _ in gone)}")

    @with_db_retry
    def _room_for(self, size: int) -> checkpoint_quota.Room:
        with session_scope() as s:
            return checkpoint_quota.room_for(s, self.job_id, size, self.keep_checkpoints,
                                             get_settings().storage_quota_bytes)

    @with_db_retry
    def _newest_checkpoint(self) -> int | None:
        with session_scope() as s:
            return attempts.newest_checkpoint_step(s, self.job_id)

    @with_db_retry
    def _drop_checkpoint_rows(self, keep: int) -> list[tuple[int, str]]:
        """Delete the records of all but the newest `keep` checkpoints; (step, prefix) of each."""
        with session_scope() as s:
            return attempts.trim_checkpoints(s, self.job_id, keep)

    @with_db_retry
    def _record_checkpoint(self, step: int, prefix: str, size: int, digest: str) -> None:
        with session_scope() as s:
            attempts.record_checkpoint(s, self.job_id, step=step, prefix=prefix, size=size,
                                       digest=digest, metrics=dict(self._latest))

    @with_db_retry
    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_poll >= get_settings().stop_poll_s:
            self._last_poll = now
            with session_scope() as s:
                cancel, pause = attempts.poll_stop(s, self.job_id)
                self._stop, self._pausing = cancel or pause, pause and not cancel
        return self._stop

    def pausing(self) -> bool:
        return self._pausing

    def stopped_elsewhere(self, pausing: bool) -> None:
        """The run stopped in another process that polled the flags (rank 0 of a
        multi-process run, workers/multiprocess.py): pausing() then says what it saw."""
        self._stop, self._pausing = True, pausing
