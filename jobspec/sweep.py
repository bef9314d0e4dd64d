"""Sweeps: a base job spec, a search space over its hyperparameters, and how many trials
to run (and how many at once). Pydantic only, like the rest of jobspec/."""

import copy
import itertools
import json
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobspec.common import Finite, Seed, Strict
from jobspec.metrics import EVAL_LOSS, minimized
from jobspec.names import Name

# At most this many trials in one sweep (each is a whole training job).
MAX_TRIALS = 100
# Only hyperparameters are searched: a trial differs from its siblings in how it trains,
# never in what data or which model shape it reads (those change what "best" means).
SEARCHABLE_PREFIX = "hyperparameters."


class LogUniform(Strict):
    type: Literal["loguniform"]
    low: Finite = Field(gt=0)
    high: Finite = Field(gt=0)

    def corners(self) -> list[Any]:
        return [self.low, self.high]


class Uniform(Strict):
    type: Literal["uniform"]
    low: Finite
    high: Finite

    def corners(self) -> list[Any]:
        return [self.low, self.high]


class IntRange(Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    def corners(self) -> list[Any]:
        return [self.low, self.high]


class Categorical(Strict):
    type: Literal["categorical"]
    choices: list[StrictBool | StrictInt | StrictFloat | StrictStr | None] = Field(
        min_length=1, max_length=100)

    def corners(self) -> list[Any]:
        return list(self.choices)


Param = Annotated[LogUniform | Uniform | IntRange | Categorical, Field(discriminator="type")]


class PrunerSpec(Strict):
    """Optuna's MedianPruner: a trial whose eval at step s is worse than the median of the
    finished (or pruned) trials' evals at s is stopped."""
    type: Literal["median"] = "median"
    # Finished trials needed before any trial is pruned.
    startup_trials: int = Field(default=1, ge=0, le=MAX_TRIALS)
    # Evals before this step never prune.
    warmup_steps: int = Field(default=0, ge=0)


class SweepSpec(Strict):
    type: Literal["sweep"] = "sweep"
    name: Name | None = None
    # A pretraining or fine-tuning job spec, exactly as POST /v1/jobs takes it.
    base: dict[str, Any]
    # "hyperparameters.<field>" -> its range.
    search_space: dict[str, Param] = Field(min_length=1, max_length=20)
    trials: int = Field(ge=1, le=MAX_TRIALS)
    # Any metric the trials' evals report (eval_loss, perplexity, accuracy, f1, ...).
    metric: str = Field(default=EVAL_LOSS, min_length=1, max_length=64)
    # None: minimize for losses and perplexity, maximize for everything else
    # (metrics.minimized).
    direction: Literal["minimize", "maximize"] | None = None
    # Trials running at once.
    parallel: int = Field(default=1, ge=1, le=MAX_TRIALS)
    # Seeds the TPE sampler: the same sweep over the same results proposes the same trials.
    seed: Seed = 0
    # null: no pruning, every trial runs to its end.
    pruner: PrunerSpec | None = Field(default_factory=PrunerSpec)

    @field_validator("base")
    @classmethod
    def _unicode(cls, base: dict[str, Any]) -> dict[str, Any]:
        # The base is read as a job spec only at admission: before that it is stored and
        # fingerprinted as JSON, which a lone surrogate (valid in a JSON string, not in
        # UTF-8) would break (a 500); a job spec's own fields refuse it too.
        try:
            json.dumps(base, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise PydanticCustomError("invalid_unicode", "{where} holds a lone surrogate, "
                                      "which is no Unicode text",
                                      {"where": _surrogate_at(base, "base")}) from None
        return base

    @model_validator(mode="after")
    def _resolve_direction(self) -> "SweepSpec":
        if self.direction is None:  # stored resolved, so the sweep shows what it optimizes
            object.__setattr__(self, "direction",
                               "minimize" if minimized(self.metric) else "maximize")
        return self

    def inconsistency(self) -> tuple[str, str] | None:
        """(param, message) for the first rule that spans several fields, else None."""
        if self.parallel > self.trials:
            return ("parallel", f"parallel {self.parallel} exceeds trials {self.trials}")
        for path, param in self.search_space.items():
            where = f"search_space.{path}"
            if not path.startswith(SEARCHABLE_PREFIX) or path.count(".") != 1:
                return (where, "only hyperparameters are searched: a path is "
                        "hyperparameters.<field>, e.g. hyperparameters.learning_rate")
            if isinstance(param, Categorical):
                continue
            if param.low > param.high or (param.low == param.high
                                          and not isinstance(param, IntRange)):
                return (where, f"low {param.low} must be less than high {param.high}")
            if isinstance(param, IntRange) and param.log and (param.low < 1 or param.step != 1):
                return (where, "a log-scaled int range needs low >= 1 and step 1")
        return None


def _surrogate_at(value: Any, where: str) -> str:
    """Where in a JSON value the first text that UTF-8 cannot encode is ("base.name")."""
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not _encodes(key):
            return where
        found = _surrogate_at(item, f"{where}.{key}")
        if found:
            return found
    return where if isinstance(value, str) and not _encodes(value) else ""


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base spec with each "hyperparameters.<field>" set to its value (a new dict)."""
    spec = copy.deepcopy(base)
    for path, value in params.items():
        section, field = path.split(".", 1)
        target = spec.setdefault(section, {})
        if isinstance(target, dict):  # else not an object: the schema says why
            target[field] = value
    return spec


def corner_specs(sweep: SweepSpec) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(path, value, spec) for each end of each range and each choice, one at a time, then
    (when there are at most MAX_CORNER_MIXES) every mix of them ("search_space", the mix,
    spec): the schema's limits are bounds and choices, and its rules across fields
    (warmup_steps <= max_steps) hold at the corners if they hold anywhere."""
    for path, param in sweep.search_space.items():
        for value in param.corners():
            yield path, value, with_params(sweep.base, {path: value})
    paths = list(sweep.search_space)
    corners = [sweep.search_space[p].corners() for p in paths]
    if len(paths) > 1 and math.prod(len(c) for c in corners) <= MAX_CORNER_MIXES:
        for mix in itertools.product(*corners):
            values = dict(zip(paths, mix, strict=True))
            yield "search_space", values, with_params(sweep.base, values)


# Specs checked at most for the mixes of corners (a few ms each); past it, a rule across
# two searched fields is checked when a trial is made, and a trial that breaks it fails
# the sweep.
MAX_CORNER_MIXES = 256
