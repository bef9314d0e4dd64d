"""Server-sent events read from lines (the text/event-stream format, as EventSource reads it)."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast


@dataclass(frozen=True)
class StreamEvent:
    """One event of GET /v1/jobs/{id}/stream: `event` is "status" (data: the job), "metric"
    (a metric point; the same step comes again when its eval results arrive) or "log" (a
    log line); `id` is the cursor to resume after it."""

    event: str
    id: str | None
    data: Any


def parse(lines: Iterable[str]) -> Iterator[StreamEvent]:
    """Events from the stream's lines; comments (keep-alives) and `retry:` are skipped."""
    event, event_id, data = "message", cast(str | None, None), cast(list[str], [])
    for line in lines:
        if line == "":
            if data:
                yield StreamEvent(event, event_id, json.loads("\n".join(data)))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
