"""Checkpoints within the storage quota: bounded when a job is admitted (the checkpoints it
keeps, at their estimated size, must fit the room the quota leaves), and checked again,
exactly, before each one is stored (a job never stores one that would pass the quota: it
trains on without it and says so).

A tiny BERT with checkpoint_every 1 and keep_checkpoints null wrote 356 MB of checkpoints
under a quota that counted none of them; a base-size checkpoint is ~1.3 GB.
"""

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.domain import quotas
from service.domain.estimates import JobEstimate
from service.domain.refusals import Invalid, TooLarge
from service.domain.specs import EvaluateJobCreate, FinetuneJobCreate, PretrainJobCreate
from service.domain.tables import CheckpointRow, JobRow
from service.settings import Settings

# A checkpoint holds the fp32 weights (4 bytes a parameter) and AdamW's two moments (8 more
# for each trained one); with early stopping, the best eval's weights too (4 more). LoRA
# trains a few adapter weights: the moments are of those (a tenth, at most, is allowed).
WEIGHT_BYTES, MOMENT_BYTES = 4, 8
ADAPTER_SHARE = 0.1
# The tokenizer's files (tokenizer.json: ~60 bytes a vocabulary entry, measured for
# WordPiece and byte-level BPE), config, model card and trainer state; 4 MB when the
# vocabulary is not known (a base model's: 30-50k entries).
PER_VOCAB_ENTRY, FIXED_BYTES, UNKNOWN_TOKENIZER_BYTES = 64, 256 * 1024, 4 * 1024**2


def estimated_bytes(job_in: PretrainJobCreate | FinetuneJobCreate, parameters: int,
                    vocab_size: int | None) -> int:
    """One checkpoint of the job (measured: a tiny GPT-2 of 718,336 parameters and 2,000
    entries wrote 8,765,894 bytes; this says 9,010,176)."""
    adapter = isinstance(job_in, FinetuneJobCreate) and job_in.adapter is not None
    trained = parameters * ADAPTER_SHARE if adapter else parameters
    size = WEIGHT_BYTES * parameters + MOMENT_BYTES * trained
    if job_in.early_stopping is not None:
        size += WEIGHT_BYTES * parameters
    files = PER_VOCAB_ENTRY * vocab_size + FIXED_BYTES if vocab_size else \
        UNKNOWN_TOKENIZER_BYTES
    return int(size + files)


def written(job_in: PretrainJobCreate | FinetuneJobCreate, found: JobEstimate) -> int:
    """How many checkpoints the job writes: one every checkpoint_every steps and at the
    last (a fine-tune without checkpoint_every: one an epoch)."""
    every = job_in.checkpoint_every
    if every is None:  # one an epoch
        every = math.ceil(found.steps / found.epochs) if found.epochs else found.steps
    return max(1, math.ceil(found.steps / max(every, 1)))


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check(session: Session, owner: str, settings: Settings,
          job_in: PretrainJobCreate | FinetuneJobCreate | EvaluateJobCreate,
          found: JobEstimate | None) -> None:
    """Refuse a job whose kept checkpoints cannot fit the room its owner's quota leaves:
    422 on keep_checkpoints naming the most that fit (null, which keeps every one, is
    accepted when all of them fit), 413 when not even one fits. Without an estimate of the
    model's size nothing is refused here; the worker's check before each checkpoint holds."""
    quota = settings.storage_quota_bytes
    if not quota or found is None or not found.parameters \
            or isinstance(job_in, EvaluateJobCreate):  # it stores no checkpoints
        return
    size = estimated_bytes(job_in, found.parameters, found.data.vocab_size)
    count = written(job_in, found)
    keep = job_in.keep_checkpoints
    kept = count if keep is None else min(keep, count)
    used = quotas.used_bytes(session, owner)
    room = max(quota - used, 0)
    if kept * size <= room:
        return
    fit = room // size
    if fit == 0:
        raise TooLarge("storage_quota_exceeded", f"keep_checkpoints: one checkpoint of this "
                       f"job is about {_size(size)}, more than the {_size(room)} your storage "
                       f"quota of {_size(quota)} leaves ({_size(used)} in use); delete "
                       "datasets, models or finished jobs' checkpoints you no longer need",
                       "keep_checkpoints")
    each = f"about {_size(size)} each, {_size(kept * size)} in all"
    if keep is None:
        every = f"{job_in.checkpoint_every} steps" if job_in.checkpoint_every else "epoch"
        what = f"null keeps every checkpoint this job writes: {count}, one every {every} ({each})"
    else:
        what = f"{keep} keeps {kept} checkpoints ({each})"
    raise Invalid("invalid_request", f"keep_checkpoints: {what}, more than the {_size(room)} "
                  f"your storage quota of {_size(quota)} leaves; set keep_checkpoints to at "
                  f"most {fit} (the newest are kept, older ones deleted as new ones land)",
                  "keep_checkpoints")


@dataclass(frozen=True)
class Room:
    """The answer for one checkpoint about to be stored."""

    fits: bool
    # It fits once the job's oldest checkpoints, which keep_checkpoints would delete as
    # soon as it lands, are deleted first.
    prune_first: bool = False
    used: int = 0
    quota: int = 0


def room_for(session: Session, job_id: str, size: int, keep: int | None,
             quota: int) -> Room:
    """Whether a checkpoint of `size` bytes may be stored for the job now (quota: the
    storage_quota_bytes setting; 0, none)."""
    if not quota:
        return Room(True)
    owner = session.scalar(select(JobRow.owner).where(JobRow.id == job_id))
    if owner is None:
        return Room(True)
    used = quotas.used_bytes(session, owner)
    if used + size <= quota:
        return Room(True, used=used, quota=quota)
    prunable = 0
    if keep is not None:  # all but the newest keep - 1 go once this one lands
        prunable = sum(session.scalars(
            select(CheckpointRow.bytes).where(CheckpointRow.job_id == job_id)
            .order_by(CheckpointRow.step.desc()).offset(keep - 1)))
    if prunable and used + size - prunable <= quota:
        return Room(True, prune_first=True, used=used, quota=quota)
    return Room(False, used=used, quota=quota)


def skipped(step: int, size: int, room: Room, newest: int | None) -> str:
    """The event of a checkpoint not stored."""
    resume = f"the newest one kept, step {newest}" if newest is not None else \
        "the start (no checkpoint is kept)"
    return (f"checkpoint at step {step} not stored: its {_size(size)} would pass your "
            f"storage quota of {_size(room.quota)} ({_size(room.used)} in use); training "
            f"goes on, storing checkpoints again once there is room (a pause or a crash "
            f"resumes from {resume}). Delete datasets, models or finished jobs' checkpoints "
            "to make room")
