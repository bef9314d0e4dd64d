"""A long queue costs the reaper a bounded round: one statement re-sends at most
MAX_RESEND_PER_ROUND lost jobs, the longest-waiting first, the next rounds the rest; many
reapers at once re-send each lost job once; a long round is one log line."""

import logging
import threading
from datetime import timedelta

import pytest

from tests.inprocess import make_app


def test_reapers_resend_each_lost_job_once_a_bounded_round_at_a_time(
        tmp_path, monkeypatch, fresh_postgres, caplog: pytest.LogCaptureFixture):
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

        # The longest-waiting first: the first 100 of these have waited longest.
        lost = [job_id for minutes in range(250)
                for job_id in queued(1, hour_ago - timedelta(minutes=250 - minutes))]
        _fresh = queued(1, utcnow())
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
        # However many reapers raced, each lost job went once, the longest-waiting round
        # first. A reaper whose statement began after another's commit takes the next
        # round's worth: that is a round of its own, still bounded, still each job once.
        first_round = lost[:lifecycle.MAX_RESEND_PER_ROUND]
        assert len(resent) == len(set(resent))
        assert set(first_round) <= set(resent) <= set(lost)
        assert len(resent) % lifecycle.MAX_RESEND_PER_ROUND == 0 or len(resent) == len(lost)
        # The next rounds take the rest, each once; the fresh one is never re-sent.
        for _ in range(3):
            resent += reaper.reap_once()
        assert sorted(resent) == sorted(lost)
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
