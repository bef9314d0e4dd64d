"""A long queue costs the reaper one statement a round, not one per job: many reapers at
once re-send each lost job once, and the log says so in one line."""

import logging
import threading
from datetime import timedelta

import pytest

from tests.inprocess import make_app


def test_many_reapers_resend_each_lost_job_once(tmp_path, monkeypatch, fresh_postgres,
                                                caplog: pytest.LogCaptureFixture):
    with make_app(tmp_path, monkeypatch, CLOZE_DATABASE_URL=fresh_postgres,
                  CLOZE_BROKER_URL="memory://"):
        from service import reaper
        from service.db import session_scope
        from service.domain import lifecycle
        from service.domain.ids import new_id
        from service.domain.tables import JobRow, utcnow

        hour_ago = utcnow() - timedelta(hours=1)

        def queued(n: int, enqueued_at) -> list[str]:
            ids = [new_id("job") for _ in range(n)]
            with session_scope() as s:
                s.add_all(lifecycle.new_job(id=job_id, type="pretrain", name="t", spec={},
                                            dataset_id="ds_x", enqueued_at=enqueued_at)
                          for job_id in ids)
            return ids

        lost, _fresh = queued(200, hour_ago), queued(1, utcnow())
        start = threading.Barrier(6)
        resent: list[str] = []

        def reap() -> None:
            start.wait()
            resent.extend(reaper.reap_once())

        threads = [threading.Thread(target=reap) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(resent) == sorted(lost)  # each once, the fresh one not at all
        with session_scope() as s:
            rows = s.query(JobRow).filter(JobRow.id.in_(lost)).all()
            assert all(r.status == "queued" and r.enqueued_at > hour_ago for r in rows)

        more = queued(50, hour_ago)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cloze.reaper"):
            again = reaper.reap_once()
        assert sorted(again) == sorted(more)
        lines = [r.getMessage() for r in caplog.records if r.name == "cloze.reaper"]
        assert lines == ["re-queued 50 jobs (" + ", ".join(again[:5]) + ", ...)"], lines
