"""Models: exports of finished jobs, imports, and checkpoints published while a job runs,
each kept as a Hugging Face directory plus an archive."""

import hashlib
import io
import json
import secrets
import tarfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobspec import names
from jobspec.model_facts import model_details, pipeline_task
from service.db import rowcount
from service.domain import admission, jobs, lifecycle, quotas
from service.domain.ids import new_id
from service.domain.imports import read_header
from service.domain.pagination import newest_first, owned
from service.domain.refusals import Conflict, DomainError, NotFound, not_found
from service.domain.schemas import Timestamp
from service.domain.tables import CheckpointRow, JobRow, ModelRow
from service.scratch import scratch_dir
from service.settings import Settings
from service.storage import CHUNK, ObjectStore


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    job_id: str | None
    checkpoint_step: int | None = None  # set when published from that step of job_id
    task: str
    architecture: str
    mask_token: str | None
    bytes: int
    details: dict[str, Any]
    created_at: Timestamp

    @classmethod
    def of(cls, row: ModelRow) -> "ModelPublic":
        return cls(id=row.id, name=row.name, job_id=row.job_id,
                   checkpoint_step=row.checkpoint_step, task=row.task,
                   architecture=row.architecture, mask_token=row.mask_token, bytes=row.bytes,
                   details=row.details, created_at=row.created_at)


def get(*, session: Session, model_id: str, scope: str | None) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None or (scope is not None and row.owner != scope):
        raise not_found("model", model_id)
    return row


def list_(*, session: Session, scope: str | None, limit: int, after: str | None
          ) -> tuple[list[ModelRow], bool]:
    return newest_first(session, owned(select(ModelRow), ModelRow, scope), ModelRow,
                        limit=limit, after=after, scope=scope)


def publish(*, session: Session, store: ObjectStore, export_dir: Path, owner: str, name: str,
            job_id: str | None, task: str, architecture: str, mask_token: str | None,
            details: dict[str, Any], checkpoint_step: int | None = None) -> ModelRow:
    """Store a model directory as files (for serving) and one archive (for download), then
    record it. The archive holds one top folder named after the model."""
    model_id = new_id("m")
    prefix = f"models/{model_id}/files"
    store.put_dir(export_dir, prefix)
    archive_key = f"models/{model_id}/{model_id}.tar.gz"
    with scratch_dir("publish-") as tmp:  # collected if this process dies
        archive = Path(tmp) / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(export_dir, arcname=model_id)
        store.put_file(archive, archive_key)
        size = archive.stat().st_size
    row = ModelRow(id=model_id, owner=owner, name=name, job_id=job_id, task=task,
                   architecture=architecture, mask_token=mask_token, storage_prefix=prefix,
                   archive_key=archive_key, bytes=size, details=details,
                   checkpoint_step=checkpoint_step)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # e.g. a checkpoint published twice at once: keep no orphans
        delete_files(store=store, model_id=model_id)
        raise
    return row


def delete_files(*, store: ObjectStore, model_id: str) -> None:
    store.delete_prefix(f"models/{model_id}")


# ---- the model card ---------------------------------------------------------------------

CARD = "README.md"
# Another writer changing the same card between our read and our write sends us back to
# read its version; two writers of one card at once are rare (two jobs finishing together).
CARD_TRIES = 5


def append_card_section(*, session: Session, store: ObjectStore, model_id: str,
                        section: str) -> None:
    """Add `section` (Markdown that starts with its heading line, e.g. "## Evaluation
    (job_x)") to the model's card, README.md, both in the archive that downloads serve and
    in its files. A section with the same heading is replaced, not repeated: a job that
    finishes twice (a resumed attempt racing the first) writes it once. A model with no
    card gets one holding just the section.

    The archive is the card's copy of record (what a user downloads): it is rebuilt under a
    new key with the new card, the row switched to it only if no other writer switched it
    meanwhile (else we start again from theirs), and the old archive removed after the
    commit. Commits `session`; raises NotFound when the model is gone."""
    for _ in range(CARD_TRIES):
        # Read from the database, not from the session (a row it holds may be stale).
        found = session.execute(select(ModelRow.archive_key, ModelRow.storage_prefix)
                                .where(ModelRow.id == model_id)).first()
        if found is None:
            raise not_found("model", model_id)
        old_key, prefix = found
        session.commit()  # no connection held while the archive is read and rebuilt
        member = f"{model_id}/{CARD}"  # the archive's one top folder is the model's id
        card = _read_member(store, old_key, member)
        new_card = with_section(card or "", section)
        if new_card == card:
            return
        new_key = f"models/{model_id}/{model_id}-{secrets.token_hex(6)}.tar.gz"
        with scratch_dir("card-") as tmp:
            archive = Path(tmp) / "model.tar.gz"
            _replace_member(store, old_key, archive, member, new_card.encode())
            store.put_file(archive, new_key)
            size = archive.stat().st_size
        switched = rowcount(session.execute(
            update(ModelRow).where(ModelRow.id == model_id, ModelRow.archive_key == old_key)
            .values(archive_key=new_key, bytes=size)
            # A row the session holds changes only if the database's did.
            .execution_options(synchronize_session="fetch")))
        session.commit()
        if switched:
            with store.open_write(f"{prefix}/{CARD}") as f:
                f.write(new_card.encode())
            store.delete(old_key)
            return
        store.delete(new_key)
    raise Conflict("conflict", f"the card of model {model_id} kept changing while it was "
                   "being written; try again")


def _is_fence(line: str) -> bool:
    return line.lstrip().startswith(("```", "~~~"))


def _heading_level(line: str) -> int:
    """1 for "# x", 2 for "## x", ...; 0 for a line that is no heading."""
    hashes = len(line) - len(line.lstrip("#"))
    return hashes if 0 < hashes <= 6 and line[hashes:hashes + 1] in (" ", "") else 0


def with_section(card: str, section: str) -> str:
    """The card with `section` in place of the section under the same heading (up to the
    next heading of its level or above), or at its end. Lines in code blocks are not
    headings (the card's usage example has Python comments)."""
    heading = section.split("\n", 1)[0].rstrip()
    level = _heading_level(heading)
    if not level:
        raise ValueError(f"a card section starts with its heading, not {heading!r}")
    body = section.rstrip("\n") + "\n"
    lines = card.splitlines(keepends=True)
    start = end = None
    fenced = False
    for i, line in enumerate(lines):
        if _is_fence(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        if start is None and line.rstrip() == heading:
            start = i
        elif start is not None and 0 < _heading_level(line) <= level:
            end = i
            break
    if start is None:
        return card.rstrip("\n") + "\n\n" + body if card.strip() else body
    after = "".join(lines[end:]) if end is not None else ""
    return "".join(lines[:start]) + body + ("\n" + after if after else "")


def _read_member(store: ObjectStore, key: str, name: str) -> str | None:
    """One file of a stored .tar.gz as text, read as a stream (a model's card comes before
    its weights: tarfile adds a folder's files in sorted order, capitals first)."""
    with store.open_read(key) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.name == name and member.isfile():
                f = tar.extractfile(member)
                return f.read().decode("utf-8", errors="replace") if f else None
    return None


def _replace_member(store: ObjectStore, key: str, target: Path, name: str, data: bytes
                    ) -> None:
    """Copy a stored .tar.gz to `target` member by member, with `name` holding `data`
    (added at its place, or at the end when the archive has none)."""
    def new_member() -> tuple[tarfile.TarInfo, io.BytesIO]:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        return info, io.BytesIO(data)

    written = False
    with store.open_read(key) as raw, tarfile.open(fileobj=raw, mode="r|gz") as old, \
            tarfile.open(target, "w:gz") as new:
        for member in old:
            if member.name == name:
                if not written:
                    new.addfile(*new_member())
                    written = True
                continue
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        if not written:
            new.addfile(*new_member())


# ---- delete -----------------------------------------------------------------------------


def delete(*, session: Session, store: ObjectStore, model_id: str, scope: str | None) -> None:
    """Delete the model's record, then its files (which frees its bytes of the owner's
    quota). A model a queued or running job starts from is refused: the job would fail
    when it downloads its base. Under the owner's admission lock: a job submitted at the
    same moment either is found here, or finds the model gone (jobs.create)."""
    row = get(session=session, model_id=model_id, scope=scope)
    admission.hold(session, row.owner)
    # A job fine-tuning from it, or an evaluate job fine-tuning it (or comparing with it).
    busy = lifecycle.active_job_naming(session, row.owner, row.id,
                                       ("base_model_id", "model_id", "compare_model_id"))
    if busy:
        raise Conflict("conflict", f"model {model_id} is read by job {busy} (its base model, or "
                       "the model it evaluates); "
                       "cancel it or wait until it ends")
    session.delete(row)
    session.commit()  # the record goes first: no one is served files that are going away
    delete_files(store=store, model_id=model_id)


# ---- publish a checkpoint ---------------------------------------------------------------

MANIFEST = "manifest.json"
# What a checkpoint holds for resuming only (early stopping's best weights among them); the
# rest is what the final export holds (both are save_pretrained of the model and the
# tokenizer: workers/engine/checkpoint.py).
TRAINER_FILES = frozenset({"optimizer.safetensors", "trainer_state.json", "best.safetensors"})
MAX_MANIFEST_BYTES = 1 << 20
# Names that only a model with LoRA adapters injected (peft) has: not a plain model.
ADAPTER_MARKS = (".lora_", ".base_layer.", ".modules_to_save.", ".original_module.")


def find_published(session: Session, job_id: str, step: int) -> ModelRow | None:
    return session.scalars(select(ModelRow).where(
        ModelRow.job_id == job_id, ModelRow.checkpoint_step == step)).first()


def _unverified(step: int, why: str) -> Conflict:
    return Conflict("checkpoint_corrupt", f"the checkpoint of step {step} does not verify "
                    f"({why}); publish another step")


def _read_manifest(store: ObjectStore, prefix: str, step: int, sha256: str
                   ) -> dict[str, dict[str, Any]]:
    """The manifest's file list, after checking the manifest against the digest recorded
    with the checkpoint (so every file's digest in it can be trusted)."""
    try:
        with store.open_read(f"{prefix}/{MANIFEST}") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise Conflict("checkpoint_gone", f"the files of the checkpoint of step {step} are "
                       "gone (deleted as an older checkpoint meanwhile?)") from None
    if len(raw) > MAX_MANIFEST_BYTES or hashlib.sha256(raw).hexdigest() != sha256:
        raise _unverified(step, "its manifest is not the one recorded")
    try:
        files = json.loads(raw)["files"]
        if not isinstance(files, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise _unverified(step, "its manifest is unreadable") from None
    for name in files:
        if Path(name).name != name or name.startswith("."):
            raise _unverified(step, f"its manifest names a bad file {name!r}")
    return files


def _fetch_verified(store: ObjectStore, prefix: str, step: int,
                    files: dict[str, dict[str, Any]], dest: Path) -> None:
    """Copy the listed files to dest, each checked against its size and sha256."""
    dest.mkdir(parents=True)
    for name, entry in files.items():
        digest, size = hashlib.sha256(), 0
        try:
            with store.open_read(f"{prefix}/{name}") as src, open(dest / name, "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        except FileNotFoundError:
            raise Conflict("checkpoint_gone", f"{name} of the checkpoint of step {step} is "
                           "gone (deleted as an older checkpoint meanwhile?)") from None
        if size != entry.get("bytes") or digest.hexdigest() != entry.get("sha256"):
            raise _unverified(step, f"{name} does not match its manifest")


def _refuse_adapters(directory: Path, step: int) -> None:
    """A model with LoRA adapters injected loads in no plain transformers class."""
    try:
        names = read_header(directory / "model.safetensors")
    except DomainError:
        raise _unverified(step, "model.safetensors is not a safetensors file") from None
    if any(mark in name for name in names for mark in ADAPTER_MARKS):
        raise Conflict("checkpoint_not_publishable", f"the checkpoint of step {step} holds "
                       "LoRA adapters that are not merged into the weights; only the final "
                       "model of a LoRA job is published (merged)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _described(job: JobRow, directory: Path, step: int, metrics: dict[str, Any],
               base: ModelRow | None) -> dict[str, Any]:
    """task, architecture, mask_token and details as the job's final model has them
    (workers/runner.py), for this step."""
    # The row's type, which a stored spec repeats (model_facts reads it from the spec).
    spec = {**(job.spec or {}), "type": job.type}
    config = _read_json(directory / "config.json")
    token = _read_json(directory / "tokenizer_config.json").get("mask_token")
    mask_token = token.get("content") if isinstance(token, dict) else token
    checkpoint = {"job_id": job.id, "step": step, "metrics": metrics}
    if job.type == "finetune":
        labels = config.get("id2label") or {}
        architecture = base.architecture if base is not None \
            else str(config.get("model_type", ""))
        details = model_details(spec, checkpoint=checkpoint, steps=step,
                                labels=[labels[k] for k in sorted(labels, key=int)]
                                if isinstance(labels, dict) else [])
    else:
        architecture = (spec.get("model") or {}).get("architecture") \
            or str(config.get("model_type", ""))
        details = model_details(spec, checkpoint=checkpoint, steps=step)
    return {"task": pipeline_task(spec), "architecture": architecture,
            "mask_token": mask_token, "details": details}


def publish_checkpoint(*, session: Session, store: ObjectStore, settings: Settings,
                       job_id: str, step: int, scope: str | None) -> tuple[ModelRow, bool]:
    """A model of one checkpoint of a job (which may still be running), holding what the
    job's final export would hold at that step: the checkpoint's files less the optimizer
    and trainer state. (model, True) when made now; (the earlier one, False) when that step
    was published before. Counts against the job owner's storage quota like an import."""
    job = jobs.get(session=session, job_id=job_id, scope=scope)
    ckpt = session.scalars(select(CheckpointRow).where(
        CheckpointRow.job_id == job.id, CheckpointRow.step == step)).first()
    if ckpt is None:
        raise NotFound("not_found", f"job {job_id} has no checkpoint at step {step} (see "
                       f"/v1/jobs/{job_id}/checkpoints)", "step")
    if (existing := find_published(session, job.id, step)) is not None:
        return existing, False
    if (job.spec or {}).get("adapter"):
        raise Conflict("checkpoint_not_publishable", f"job {job_id} trains LoRA adapters: "
                       "its checkpoints hold them unmerged, which no plain model loads; only "
                       "its final model is published (merged)")
    files = _read_manifest(store, ckpt.storage_prefix, step, ckpt.sha256)
    wanted = {n: e for n, e in files.items() if n not in TRAINER_FILES}
    if not {"model.safetensors", "config.json"} <= set(wanted):
        raise _unverified(step, "it lacks model.safetensors or config.json")
    quotas.check(session, job.owner, settings,
                 sum(int(e.get("bytes") or 0) for e in wanted.values()))
    base_id = (job.spec or {}).get("base_model_id")
    base = session.get(ModelRow, base_id) if base_id else None
    metrics, prefix = dict(ckpt.metrics or {}), ckpt.storage_prefix
    session.commit()  # give the connection back while the files are copied (seconds)
    with scratch_dir("ckpt-") as tmp:
        export = Path(tmp) / "export"
        _fetch_verified(store, prefix, step, wanted, export)
        _refuse_adapters(export, step)
        described = _described(job, export, step, metrics, base)
        # The job's name cut so that "-step-N" fits: every checkpoint's model named apart.
        name = names.derived((job.spec or {}).get("name") or job.id, f"-step-{step}")
        try:
            row = publish(session=session, store=store, export_dir=export, owner=job.owner,
                          name=name, job_id=job.id, checkpoint_step=step, **described)
        except IntegrityError:  # the same step published by a request running alongside
            session.rollback()
            raced = find_published(session, job.id, step)
            if raced is None:
                raise
            return raced, False
    return row, True
