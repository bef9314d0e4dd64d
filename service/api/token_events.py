"""Server-sent events of a generation, as text-generation-inference and OpenAI send them:
one `data: <json>` line per event, then (OpenAI's) `data: [DONE]`."""

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse


async def _lines(events: AsyncIterator[dict[str, Any]], done: bool) -> AsyncIterator[bytes]:
    async for event in events:
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
    if done:
        yield b"data: [DONE]\n\n"


def event_stream(events: AsyncIterator[dict[str, Any]], *, done: bool = False
                 ) -> StreamingResponse:
    """The events as text/event-stream. A client that goes away cancels the iteration
    (Starlette listens for the disconnect), which frees its place in the model's batch."""
    # No proxy buffering: each token is sent as it is made.
    return StreamingResponse(_lines(events, done), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
