"""Runs one job: claim the row, fetch the corpus, train, publish the model, record the end.

The database is the record of a job. Celery may deliver a message twice; the claim below
is a conditional UPDATE, so only one delivery ever trains.
"""

import json
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import update

from service.db import session_scope
from service.domain.ids import new_id
from service.domain.tables import DatasetRow, JobRow, ModelRow, utcnow
from service.storage import ObjectStore, get_store
from workers.engine import ConfigError, CorpusError, EngineError, PretrainConfig, run_pretraining
from workers.reporter import DbReporter

log = logging.getLogger("cloze.worker")


def claim(job_id: str) -> bool:
    """Move the job from queued to running; False if another delivery already did."""
    with session_scope() as s:
        now = utcnow()
        claimed = s.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
            .values(status="running", started_at=now, heartbeat_at=now,
                    attempts=JobRow.attempts + 1))
        return claimed.rowcount == 1


def finish(job_id: str, status: str, **values: Any) -> None:
    """Record the end; conditional on `running` so exactly one terminal state wins."""
    with session_scope() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                  .values(status=status, finished_at=utcnow(), **values))


def run_job(job_id: str) -> None:
    if not claim(job_id):
        log.info("%s: not queued any more (a duplicate delivery or cancelled); skipping", job_id)
        return
    store = get_store()
    reporter = DbReporter(job_id, store)
    try:
        with tempfile.TemporaryDirectory(prefix=f"cloze-{job_id}-") as work:
            _train(job_id, store, reporter, Path(work))
    except CorpusError as exc:
        _fail(job_id, reporter, "bad_data", str(exc))
    except ConfigError as exc:
        _fail(job_id, reporter, "bad_config", str(exc))
    except EngineError as exc:
        _fail(job_id, reporter, "training_error", str(exc))
    except Exception as exc:
        log.exception("%s: unexpected failure", job_id)
        _fail(job_id, reporter, "internal_error",
              f"the job failed unexpectedly ({exc.__class__.__name__}); see the worker log")


def _fail(job_id: str, reporter: DbReporter, code: str, message: str) -> None:
    reporter.event("error", message)
    finish(job_id, "failed", error_code=code, error_message=message)


def _train(job_id: str, store: ObjectStore, reporter: DbReporter, work: Path) -> None:
    with session_scope() as s:
        job = s.get(JobRow, job_id)
        assert job is not None
        spec = dict(job.spec)
        dataset = s.get(DatasetRow, job.dataset_id)
        if dataset is None:
            raise CorpusError(f"dataset {job.dataset_id} no longer exists")
        fmt, key, name = dataset.format, dataset.storage_key, dataset.name
    config = PretrainConfig.from_spec(spec)
    corpus = work / f"corpus.{fmt}"
    reporter.event("info", f"downloading dataset {name!r}")
    store.get_file(key, corpus)
    result = run_pretraining(config, str(corpus), fmt, str(work / "run"), reporter)
    if result.stopped or result.export_dir is None:
        reporter.event("info", f"cancelled at step {result.steps}")
        finish(job_id, "cancelled")
        return
    model_id = _publish(job_id, spec, result, store, work)
    reporter.event("info", f"model {model_id} is ready")
    finish(job_id, "succeeded", model_id=model_id)


def _publish(job_id: str, spec: dict[str, Any], result: Any, store: ObjectStore,
             work: Path) -> str:
    """Store the export as files (for serving) and as one archive (for download)."""
    model_id = new_id("m")
    prefix = f"models/{model_id}/files"
    export = Path(result.export_dir)
    store.put_dir(export, prefix)
    archive = work / f"{model_id}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(export, arcname=model_id)
    archive_key = f"models/{model_id}/{model_id}.tar.gz"
    store.put_file(archive, archive_key)
    details = {
        "num_parameters": result.num_parameters, "tokenizer": result.tokenizer_info,
        "corpus": result.corpus_info, "steps": result.steps, "tokens_seen": result.tokens_seen,
        "final_eval": result.final_eval, "objective": spec.get("objective"),
        "model": spec.get("model"), "sequence_length": spec["hyperparameters"]["sequence_length"],
    }
    with session_scope() as s:
        s.add(ModelRow(id=model_id, name=spec.get("name") or model_id, job_id=job_id,
                       task="fill-mask", architecture=spec["model"]["architecture"],
                       mask_token=_mask_token(export), storage_prefix=prefix,
                       archive_key=archive_key, bytes=archive.stat().st_size, details=details))
    return model_id


def _mask_token(export: Path) -> str | None:
    config = json.loads((export / "tokenizer_config.json").read_text())
    token = config.get("mask_token")
    return token.get("content") if isinstance(token, dict) else token
