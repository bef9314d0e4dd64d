"""What every spec section shares."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobspec.metrics import EVAL_LOSS, minimized

Finite = Annotated[float, Field(allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Strict(BaseModel):
    # A misspelt field is an error the user wants to hear about, not a silent default.
    # strict: a JSON true or "32" is not a count (lax pydantic would read them as 1 and 32).
    model_config = ConfigDict(extra="forbid", strict=True)


class SpecError(ValueError):
    """A spec that cannot run; param names the field to fix ("hyperparameters.batch_size")."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


# Checkpoints a job keeps by default (keep_checkpoints): enough to resume when the newest
# fails to verify and to compare a few recent steps, bounded whatever the run's length.
KEEP_CHECKPOINTS = 5


class EarlyStopping(Strict):
    """End a job whose eval metric stopped improving; its model is then the best eval's
    weights, not the last ones."""
    # Any metric the job's evals report (eval_loss, perplexity, accuracy, f1, ...).
    metric: str = Field(default=EVAL_LOSS, min_length=1, max_length=64)
    # None: "min" for losses and perplexity, "max" for everything else (metrics.minimized).
    mode: Literal["min", "max"] | None = None
    # Evals in a row without an improvement larger than min_delta before the job ends.
    patience: int = Field(default=3, ge=1, le=10_000)
    min_delta: Finite = Field(default=0.0, ge=0)

    @property
    def minimize(self) -> bool:
        if self.mode is not None:
            return self.mode == "min"
        return minimized(self.metric)
