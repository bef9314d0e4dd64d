"""The callback interface through which a training run reports progress."""

from typing import Protocol, runtime_checkable

from jobspec.metrics import EvalPoint, TrainPoint


class Reporter(Protocol):
    """Receives progress from the training thread; every method is called from that thread."""

    def event(self, level: str, message: str) -> None:
        """A human-readable log line; level is "info", "warning" or "error"."""

    def log(self, point: TrainPoint) -> None:
        """Training metrics every log_every steps (jobspec/metrics.py names them all)."""

    def eval(self, point: EvalPoint) -> None:
        """Held-out metrics: eval_loss and the objective's or task's own, with the probes."""

    def checkpoint(self, step: int, directory: str) -> None:
        """A complete checkpoint directory was written; the caller may upload and delete it."""

    def should_stop(self) -> bool:
        """Polled every step; True asks the run to stop cooperatively."""


@runtime_checkable
class Pausable(Protocol):
    """A Reporter whose stop may be a pause: the run then checkpoints the step it reached
    before it returns, so that a later run resumes it exactly."""

    def pausing(self) -> bool:
        """Once should_stop() said yes: True if the stop is a pause, False if a cancel."""
