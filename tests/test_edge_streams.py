"""Event streams are bounded (issue 22, finding 6). The probe: one anonymous client held
1,278 streams on a paused job, within its rate limit; /health took 4-6 s and GET /v1/jobs
5-6.4 s. Now each caller, and the server in all, may keep only so many open (429 with
Retry-After past that), and a stream on a quiet job polls less and less often. The whole
app served by uvicorn in this process, as in test_stream.py."""

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.domain.tables import LOCAL_OWNER
from tests.inprocess import make_app
from tests.test_stream import Served, new_job


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    from service.api import stream

    monkeypatch.setattr(stream, "POLL_S", 0.05)
    monkeypatch.setattr(stream, "MAX_STREAM_S", 60.0)
    with make_app(tmp_path, monkeypatch, CLOZE_MAX_STREAMS_PER_CALLER="3",
                  CLOZE_MAX_STREAMS="5") as app:
        served = Served(app)
        yield served
        served.stop()


_readers: list[Iterator[str]] = []  # a reader let go of would close its stream


def open_stream(stack: contextlib.ExitStack, http: httpx.Client, job_id: str) -> httpx.Response:
    """A stream held open (its first event read), or the refusal."""
    r = stack.enter_context(http.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=30))
    if r.status_code == 200:
        lines = r.iter_lines()
        _readers.append(lines)
        while not next(lines).startswith("event: status"):
            pass
    else:
        r.read()
    return r


def open_streams() -> int:
    from service.api.stream_slots import SLOTS

    return SLOTS.total


def wait_for(predicate, what: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_one_anonymous_client_cannot_hold_more_than_its_share(served):
    """The probe, scaled down: one keyless local client opening stream after stream on a
    quiet job gets 3, then 429s; /health and GET /v1/jobs answer meanwhile."""
    job_id = new_job(owner=LOCAL_OWNER)
    with contextlib.ExitStack() as stack, httpx.Client(base_url=served.url) as http:
        answers = [open_stream(stack, http, job_id) for _ in range(20)]
        codes = [r.status_code for r in answers]
        assert codes == [200] * 3 + [429] * 17, codes
        refused = answers[-1]
        assert refused.headers["retry-after"] == "5"
        error = refused.json()["error"]
        assert error["code"] == "too_many_streams" and "CLOZE_MAX_STREAMS_PER_CALLER" in \
            error["message"], error
        assert open_streams() == 3
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        assert http.get("/v1/jobs").status_code == 200
        assert time.monotonic() - started < 2.0
    wait_for(lambda: open_streams() == 0, "the streams' slots were given back")


def test_callers_are_counted_apart_and_the_server_in_all(served):
    job_id = new_job(owner="alice")
    other = new_job(owner="bob")
    alice, bob = served.client("alice"), served.client("bob")
    with contextlib.ExitStack() as stack:
        mine = [open_stream(stack, alice, job_id) for _ in range(4)]
        assert [r.status_code for r in mine] == [200, 200, 200, 429]
        # a refused stream takes no slot, nor does one for a job that is not yours
        assert open_stream(stack, bob, job_id).status_code == 404
        assert open_streams() == 3
        theirs = [open_stream(stack, bob, other) for _ in range(3)]
        # bob has one of his own left, but the server has 5 open: the total refuses
        assert [r.status_code for r in theirs] == [200, 200, 429]
        assert "CLOZE_MAX_STREAMS)" in theirs[-1].json()["error"]["message"]
        assert open_streams() == 5
        mine[0].close()  # one of alice's ends: a slot frees
        wait_for(lambda: open_streams() == 4, "a closed stream's slot was given back")
        assert open_stream(stack, bob, other).status_code == 200
    alice.close()
    bob.close()
    wait_for(lambda: open_streams() == 0, "every slot was given back")


def test_a_stream_on_a_quiet_job_polls_less_and_less(served, monkeypatch):
    """Nothing new: each empty poll doubles the wait, up to 4 polls' worth (2 s by
    default), where every stream used to query twice a second for as long as it lasted."""
    from service.api import stream

    polls: list[float] = []
    real = stream._poll

    def counted(job_id: str, cursor: stream.Cursor) -> stream.Poll:
        polls.append(time.monotonic())
        return real(job_id, cursor)

    monkeypatch.setattr(stream, "_poll", counted)
    monkeypatch.setattr(stream, "MAX_STREAM_S", 2.0)
    job_id = new_job(owner=LOCAL_OWNER)
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=served.url) as http:
            http.get(f"/v1/jobs/{job_id}/stream", timeout=30)
        done.set()

    threading.Thread(target=watch).start()
    assert done.wait(30)
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    print(f"\n{len(polls)} polls in 2 s, gaps {[round(g, 2) for g in gaps]}")
    # At a fixed 0.05 s that was ~40 polls; backing off to 0.2 s, ~12.
    assert len(polls) <= 16, len(polls)
    assert max(gaps) < 0.2 * 2, gaps  # and never slower than the cap (with slack)
