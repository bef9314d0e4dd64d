"""GET /v1/jobs/{id}/stream: a job's status changes, metric points and log lines as
server-sent events, for `cloze jobs watch` and for a browser's EventSource.

The server polls the database every POLL_S seconds while the job has news, backing off to
IDLE_POLL_S while it has none (a paused or long-queued job), each poll a session of its own
that is closed before the next wait, so an open stream holds no connection of the pool (a
hundred watchers must not starve the API of connections). How many streams may be open at
once, per caller and in all, is bounded (stream_slots.py). Every event's `id:` is the
cursor after it, four integers `m.k.e.s`: the last metric row sent (`m`) and how many
fields it had (`k`: a step's eval results are merged into its row after its train
fields, and the row is then sent again), the last log line (`e`) and the job's status
rank (`s`, see `status_rank`). Compared as integer tuples, each event's id is larger than
the one before, and a reconnect with `Last-Event-ID` gets exactly what came after it.
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from service.api.auth import caller_bucket
from service.api.deps import CallerDep, SessionDep, SettingsDep
from service.api.json_body import JsonBodyRoute
from service.api.stream_slots import SLOTS, Slot
from service.db import session_scope
from service.domain import jobs, lifecycle
from service.domain.jobs import EventPublic, JobPublic, MetricPoint
from service.domain.lifecycle import JobStatus
from service.domain.tables import EventRow, JobRow, MetricRow
from service.http_errors import ApiError

log = logging.getLogger("cloze.stream")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=JsonBodyRoute)

POLL_S = 0.5  # how soon a new point reaches the watcher; one small query per stream each
# Each poll that finds nothing doubles the wait, up to this many POLL_S: a stream on a quiet
# job costs a query every 2 s, and news after a quiet spell arrives within 2 s.
IDLE_POLLS = 4
KEEPALIVE_S = 15.0  # a comment when nothing else was sent, so proxies keep the line open
# A stream ends after this long even if its job does not (a job queued behind others for
# hours): the client reconnects with Last-Event-ID and misses nothing. Not a setting: it
# bounds the server's work per request, and no deployment needs to change it.
MAX_STREAM_S = 300.0
PAGE = 500  # rows per query; a long curve arrives in pages, back to back
RETRY_MS = 1000  # what EventSource waits before it reconnects

CURSOR = re.compile(r"^(\d{1,18})\.(\d{1,6})\.(\d{1,18})\.(\d{1,9})$")


@dataclass
class Cursor:
    metric_id: int = 0
    metric_fields: int = 0
    event_id: int = 0
    status_rank: int = 0  # no status sent yet: the current one goes first

    def __str__(self) -> str:
        return f"{self.metric_id}.{self.metric_fields}.{self.event_id}.{self.status_rank}"

    @classmethod
    def parse(cls, text: str | None) -> "Cursor":
        if text is None or not text.strip():
            return cls()
        match = CURSOR.match(text.strip())
        if match is None:
            raise ApiError(422, "invalid_request", "Last-Event-ID: send back the id of the "
                           "last event received (four integers, m.k.e.s)", "Last-Event-ID")
        m, k, e, s = (int(g) for g in match.groups())
        return cls(m, k, e, s)


def status_rank(row: JobRow) -> int:
    """A number that grows with every status move the job makes, read from its row alone
    (so a reconnecting client's cursor says which statuses it has seen): for attempt count
    a (a claim adds one) and p pauses (a pause adds one), with n = a + p: running and
    paused are 2n, queued 2n + 1 and a final status 2n + 2."""
    moves = row.attempts + row.pauses
    if row.status in lifecycle.TERMINAL:
        return 2 * moves + 2
    if row.status == JobStatus.QUEUED.value:
        return 2 * moves + 1
    return 2 * moves


def _frame(event: str, cursor: Cursor, data: str) -> str:
    return f"event: {event}\nid: {cursor}\ndata: {data}\n\n"


@dataclass
class Poll:
    frames: list[str]
    done: bool  # the final status was sent: the stream ends


def _poll(job_id: str, cursor: Cursor) -> Poll:
    """What is new since `cursor` (advanced in place), in one short-lived session. The job
    row is read first: a final status it shows was committed after every metric and log
    line of the run, so those are all visible to the queries that follow it."""
    with session_scope() as session:
        job = session.get(JobRow, job_id)
        if job is None:  # deleted meanwhile: nothing more will come
            return Poll([], True)
        metrics = list(session.scalars(
            select(MetricRow).where(MetricRow.job_id == job_id,
                                    MetricRow.id >= cursor.metric_id)
            .order_by(MetricRow.id).limit(PAGE)))
        events = list(session.scalars(
            select(EventRow).where(EventRow.job_id == job_id, EventRow.id > cursor.event_id)
            .order_by(EventRow.id).limit(PAGE)))
        drained = len(metrics) < PAGE and len(events) < PAGE
        rank, final = status_rank(job), job.status in lifecycle.TERMINAL
        frames: list[str] = []

        def status() -> None:
            cursor.status_rank = rank
            frames.append(_frame("status", cursor, JobPublic.of(job).model_dump_json()))

        if rank > cursor.status_rank and not final:
            status()
        for row in metrics:
            point = MetricPoint.of(row)
            fields = len(point.model_dump(exclude_none=True))
            if row.id == cursor.metric_id and fields <= cursor.metric_fields:
                continue  # sent before and unchanged
            cursor.metric_id, cursor.metric_fields = row.id, fields
            frames.append(_frame("metric", cursor, point.model_dump_json(exclude_none=True)))
        for event in events:
            cursor.event_id = event.id
            frames.append(_frame("log", cursor, EventPublic(
                id=event.id, level=event.level, message=event.message,
                created_at=event.created_at).model_dump_json()))
        if final and drained:
            if rank > cursor.status_rank:
                status()
            return Poll(frames, True)
        return Poll(frames, False)


async def _events(request: Request, job_id: str, cursor: Cursor) -> AsyncIterator[str]:
    started = last_sent = time.monotonic()
    wait = POLL_S
    yield f"retry: {RETRY_MS}\n\n"
    try:
        while time.monotonic() - started < MAX_STREAM_S:
            poll = await run_in_threadpool(_poll, job_id, cursor)
            for frame in poll.frames:
                yield frame
            if poll.frames:
                last_sent = time.monotonic()
            if poll.done:
                return
            if time.monotonic() - last_sent >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            if len(poll.frames) >= PAGE:  # a full page: the rest follows at once
                continue
            wait = POLL_S if poll.frames else min(2 * wait, IDLE_POLLS * POLL_S)
            await asyncio.sleep(wait)
    finally:
        log.info("stream of %s ended at %s after %.1f s", job_id, cursor,
                 time.monotonic() - started)


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back when it ends, however it ends (the job's final
    status, MAX_STREAM_S, the client hanging up, an error)."""

    def __init__(self, content: AsyncIterator[str], slot: Slot) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


@router.get("/{job_id}/stream", response_class=StreamingResponse, responses={200: {
    "description": "server-sent events: `status` (the job, on each status change), `metric` "
                   "(a metric point; sent again when its eval results arrive), `log` (a log "
                   "line); each `id:` is a cursor to resume from with `Last-Event-ID`",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def stream_job(job_id: str, request: Request, session: SessionDep, caller: CallerDep,
                     settings: SettingsDep, last_event_id: Annotated[str | None, Header(
                         alias="Last-Event-ID", max_length=64,
                         description="the id of the last event received")] = None
                     ) -> StreamingResponse:
    """A job's status changes, metric points and log lines as they happen; the stream ends
    once the job's final status has been sent (or after MAX_STREAM_S: reconnect). 429 with
    Retry-After while the caller, or the server, has as many streams open as allowed."""
    cursor = Cursor.parse(last_event_id)

    def check() -> None:
        jobs.get(session=session, job_id=job_id, scope=caller.scope)
        # The request's connection goes back to the pool now, not when the stream ends.
        session.commit()
        session.close()

    # The slot first: past the limit a stream is refused without a query.
    slot = SLOTS.take(caller_bucket(caller, request.scope, settings),
                      per_caller=settings.max_streams_per_caller, total=settings.max_streams)
    try:
        await run_in_threadpool(check)
    except BaseException:
        slot.release()
        raise
    return _SlotStream(_events(request, job_id, cursor), slot)
