"""Dynamic batching: requests for one model are gathered into one forward pass.

Each loaded model has one thread that runs its forward passes. Callers put their sequences
in its queue and wait on futures; the thread takes whatever is queued (up to `max_batch`),
runs it as one padded batch and hands each caller its own rows. While a batch runs, new
requests queue up and form the next one, so batches grow with the load and a lone request
never waits for company (as text-generation-inference's continuous batching does; `max_wait`
may add a short wait for more when the model is idle). The queue is bounded: past
`max_queue` waiting sequences a request is refused at once (503 + Retry-After), not queued
without limit.
"""

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any


class Overloaded(Exception):
    """The model's queue is full: the caller should retry shortly."""


class Batcher:
    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], *, max_batch: int,
                 max_wait_s: float, max_queue: int, name: str) -> None:
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.max_queue = max_queue
        self._queue: deque[tuple[Any, Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # forward passes run, for tests and health
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[Any]) -> list[Future[Any]]:
        """Queue all of a request's sequences, or none of them when there is no room."""
        with self._cond:
            if self._closed:
                raise Overloaded("the model is being unloaded")
            if len(self._queue) + len(items) > self.max_queue:
                raise Overloaded(f"{len(self._queue)} sequences are waiting for this model")
            futures: list[Future[Any]] = [Future() for _ in items]
            self._queue.extend(zip(items, futures, strict=True))
            self._cond.notify()
        return futures

    def close(self) -> None:
        """Stop after the sequences already queued have run."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _take(self) -> list[tuple[Any, Future[Any]]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            if self.max_wait_s > 0 and len(self._queue) < self.max_batch:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._queue) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            # A caller that went away (cancelled its future) costs no compute.
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._run([item for item, _ in live])
            except BaseException as exc:  # handed to every caller of the batch
                for _, fut in live:
                    fut.set_exception(exc)
            else:
                for (_, fut), result in zip(live, results, strict=True):
                    fut.set_result(result)
            self.batches += 1
