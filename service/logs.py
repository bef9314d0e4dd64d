"""Logging for the API and the workers: the ids a line belongs to, and JSON lines on request.

`request_id` (the API: one per HTTP request) and `job_id` (a worker running a job, or an
API request on /v1/jobs/{id}/...) live in context variables, so every log line written
while they are set carries them, whichever module writes it, through the standard
`logging` module. `CLOZE_LOG_FORMAT=json` turns each line into one JSON object (for a log
shipper); the default stays the readable console format.
"""

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("cloze_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("cloze_job_id", default=None)

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers that uvicorn and Celery give handlers of their own (not only the root's).
OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery.task",
                       "celery.redirected", "multiprocessing")


def bind(*, job: str | None = None, request: str | None = None) -> Callable[[], None]:
    """Set the ids (those given) for the lines that follow; returns what undoes it."""
    tokens = []
    if job is not None:
        tokens.append((job_id, job_id.set(job)))
    if request is not None:
        tokens.append((request_id, request_id.set(request)))

    def reset() -> None:
        for var, token in reversed(tokens):
            var.reset(token)

    return reset


@contextlib.contextmanager
def log_context(*, job: str | None = None, request: str | None = None) -> Iterator[None]:
    """Within: log lines carry these ids (those not given keep their current value)."""
    reset = bind(job=job, request=request)
    try:
        yield
    finally:
        reset()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the ids that
    are set, and the traceback of an exception if the line has one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured fields: extra={"fields": {}}
        if isinstance(fields, dict):
            line.update(fields)
        for name, var in (("request_id", request_id), ("job_id", job_id)):
            value = getattr(record, name, None) or var.get()
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def json_wanted() -> bool:
    # Read here rather than in service/settings.py: logging is configured before (and
    # apart from) the settings object, in the API's module and in the worker's signals.
    return os.environ.get("CLOZE_LOG_FORMAT", "").strip().lower() == "json"


def use_json(logger: logging.Logger) -> None:
    """Give the logger's own handlers the JSON formatter."""
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


def use_json_everywhere() -> None:
    """JSON on the root's handlers and on those of the loggers that have their own, and
    Python's warnings as log lines (a shipper reads one JSON object per line)."""
    use_json(logging.getLogger())
    for name in OWN_HANDLER_LOGGERS:
        use_json(logging.getLogger(name))
    logging.captureWarnings(True)
    use_json(logging.getLogger("py.warnings"))


def configure(level: int = logging.INFO) -> None:
    """The process's logging: the console format by default, JSON lines with
    CLOZE_LOG_FORMAT=json (also on the handlers uvicorn installed before importing the app)."""
    logging.basicConfig(level=level, format=CONSOLE_FORMAT)
    if not json_wanted():
        return
    use_json_everywhere()
    # The API's middleware writes one structured line per request instead (with its
    # route template, status and duration as fields).
    logging.getLogger("uvicorn.access").disabled = True
