"""What every spec section shares."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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
