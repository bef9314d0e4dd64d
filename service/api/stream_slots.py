"""How many event streams (GET /v1/jobs/{id}/stream) are open in this process, per caller
and in all. The probe: one anonymous client held 1,278 streams on a paused job, within its
rate limit (a stream is one request however long it lasts), and /health took 4-6 s. Past
CLOZE_MAX_STREAMS_PER_CALLER or CLOZE_MAX_STREAMS a new stream is 429 with Retry-After;
the dashboard and the Python client reconnect after it.

Counted in this process: a stream lives on one connection to one process, and each API
process bounds what it serves (several processes behind a balancer each allow as many).
"""

import threading
from collections import Counter

from service.http_errors import ApiError

# A stream ends within MAX_STREAM_S (or when its job does); a slot frees when one does.
RETRY_AFTER_S = 5


class Slot:
    """One open stream; released once, however often release() is called."""

    def __init__(self, slots: "Slots", caller: str) -> None:
        self._slots, self.caller, self._held = slots, caller, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self.caller)


class Slots:
    def __init__(self) -> None:
        self._per_caller: Counter[str] = Counter()
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return self._total

    def open_for(self, caller: str) -> int:
        return self._per_caller[caller]

    def take(self, caller: str, *, per_caller: int, total: int) -> Slot:
        """A slot for one more stream of `caller`, or 429."""
        with self._lock:
            if self._per_caller[caller] >= per_caller:
                raise _busy(f"{per_caller} event streams are open for this caller already "
                            "(CLOZE_MAX_STREAMS_PER_CALLER); close one, or retry later")
            if self._total >= total:
                raise _busy(f"this server has {total} event streams open already "
                            "(CLOZE_MAX_STREAMS); retry later")
            self._per_caller[caller] += 1
            self._total += 1
        return Slot(self, caller)

    def _release(self, caller: str) -> None:
        with self._lock:
            self._total -= 1
            self._per_caller[caller] -= 1
            if self._per_caller[caller] <= 0:
                del self._per_caller[caller]  # no entry per caller ever seen


def _busy(message: str) -> ApiError:
    return ApiError(429, "too_many_streams", message,
                    headers={"Retry-After": str(RETRY_AFTER_S)})


SLOTS = Slots()
