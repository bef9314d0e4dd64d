"""Crash leftovers, collected at each API's and worker's start and then every
CLOZE_ORPHAN_INTERVAL_S (the reaper's thread, service/reaper.py).

What a crash leaves: a dataset upload's partial file with no row (kill -9 of the API at
34 MB of 40 MB kept it forever, uncounted); an import's or a publish's model files
written before their row; a checkpoint a dead attempt was uploading, or one whose row was
deleted (keep_checkpoints) just before the process died; token shards stored for a
dataset deleted meanwhile; empty folders of uploads; and the scratch folders of processes
that died (service/scratch.py).

Stored objects are collected only under the prefixes this service writes, only where no
row records them, and only once nothing under them has changed for CLOZE_ORPHAN_GRACE_S:
an upload in progress keeps writing, and every writer records its row within moments of
its last write. Token shards that are whole (meta.json, written last) but not recorded
are counted instead (stored by an earlier release, or by a worker that died just after).
On S3 an upload in progress is a multipart upload, not an object, until it completes:
one the API abandoned is removed by the bucket's lifecycle rule
(AbortIncompleteMultipartUpload), which S3 deployments should set.
"""

import logging
import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import scratch
from service.db import session_scope
from service.domain import quotas
from service.domain.jobs import checkpoints_prefix
from service.domain.tables import CheckpointRow, DatasetRow, JobRow, ModelRow, TokenizedRow
from service.settings import get_settings
from service.storage import ObjectStore, get_store

log = logging.getLogger("cloze.orphans")
BATCH = 500  # ids per query (SQLite allows a limited number of parameters)


class Collector:
    def __init__(self, store: ObjectStore, grace_s: float) -> None:
        self.store, self.grace_s = store, grace_s
        self.now = time.time()
        self.removed: list[str] = []

    def _stale(self, prefix: str) -> bool:
        changed = self.store.last_modified(prefix)
        return changed is not None and self.now - changed > self.grace_s

    def _drop(self, prefixes: Iterable[str]) -> None:
        for prefix in prefixes:
            if self._stale(prefix):
                self.store.delete_prefix(prefix)
                self.removed.append(prefix)

    def owned(self, top: str, table: type[DatasetRow] | type[ModelRow] | type[JobRow]
              ) -> list[str]:
        """Drop top/<id> that no row of table has; the ids that have one."""
        names = self.store.children(top)
        known: set[str] = set()
        with session_scope() as s:
            for i in range(0, len(names), BATCH):
                known.update(s.scalars(select(table.id).where(
                    table.id.in_(names[i:i + BATCH]))))
        self._drop(f"{top}/{name}" for name in names if name not in known)
        return sorted(known)

    def checkpoints(self, job_ids: list[str]) -> None:
        """Drop checkpoint folders of existing jobs that no checkpoint row records."""
        for job_id in job_ids:
            root = checkpoints_prefix(job_id)
            names = self.store.children(root)
            if not names:
                continue
            with session_scope() as s:
                recorded = set(s.scalars(select(CheckpointRow.storage_prefix)
                                         .where(CheckpointRow.job_id == job_id)))
            self._drop(p for p in (f"{root}/{n}" for n in names) if p not in recorded)

    def tokenized(self) -> None:
        """Drop token shards of deleted datasets and torn sets; count whole unrecorded ones."""
        for dataset_id in self.owned("tokenized", DatasetRow):
            names = self.store.children(f"tokenized/{dataset_id}")
            with session_scope() as s:
                recorded = _recorded(s, dataset_id)
            for prefix in (f"tokenized/{dataset_id}/{n}" for n in names):
                if prefix in recorded:
                    continue
                if self.store.exists(f"{prefix}/meta.json"):
                    with session_scope() as s:
                        quotas.record_tokenized(s, prefix=prefix, dataset_id=dataset_id,
                                                size=self.store.bytes_under(prefix))
                else:
                    self._drop([prefix])


def _recorded(session: Session, dataset_id: str) -> set[str]:
    return set(session.scalars(select(TokenizedRow.prefix)
                               .where(TokenizedRow.dataset_id == dataset_id)))


def collect(store: ObjectStore | None = None, grace_s: float | None = None,
            scratch_root: str | None = None) -> list[str]:
    """One round: the stored prefixes and the scratch folders removed."""
    store = store or get_store()
    collector = Collector(store, get_settings().orphan_grace_s if grace_s is None
                          else grace_s)
    collector.owned("datasets", DatasetRow)
    collector.owned("models", ModelRow)
    collector.checkpoints(collector.owned("jobs", JobRow))
    collector.tokenized()
    removed = collector.removed + scratch.collect(scratch_root)
    for what in removed[:10]:
        log.warning("collected %s, left by a crash", what)
    if len(removed) > 10:  # one line for the rest
        log.warning("collected %d more crash leftovers", len(removed) - 10)
    return removed
