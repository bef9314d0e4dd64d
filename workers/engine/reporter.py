"""The callback interface through which a training run reports progress."""

from typing import Any, Protocol, runtime_checkable


class Reporter(Protocol):
    """Receives progress from the training thread; every method is called from that thread."""

    def event(self, level: str, message: str) -> None:
        """A human-readable log line; level is "info", "warning" or "error"."""

    def log(self, point: dict[str, Any]) -> None:
        """Training metrics every log_every steps: step, train_loss, learning_rate, grad_norm,
        tokens_per_second, tokens_seen; on CUDA GPUs of known peak FLOP/s also mfu (0-1)."""

    def eval(self, point: dict[str, Any]) -> None:
        """Held-out metrics: step, eval_loss, perplexity, accuracy (masked-token accuracy)."""

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
