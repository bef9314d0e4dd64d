"""Training throughput per kind of worker: workers record what they measured after each
job, and time estimates read it.

One row per (worker kind, architecture, objective or fine-tuning task, parameters). A
worker kind is its device as the worker describes it, so every worker on the same hardware
shares and refines one figure. A size no worker measured is scaled from the nearest one
measured (time per token grows with the parameters); with no measurement at all a
conservative default rate stands in, and the estimate says which of the three it is.
"""

import math
import socket
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.domain.tables import ThroughputRow, utcnow

# The default, before any worker measured: training FLOPs (6 per parameter per token) per
# second that any worker reaches, a 2-core CPU included (the benchmark CPU trains
# BERT-mini at ~6x this; bench/README.md), plus what a small model's run spends outside
# its matrix products (per-step overhead, evals, checkpoints, export), so an estimate made
# before any measurement errs long.
DEFAULT_TRAIN_FLOPS = 1e11
DEFAULT_STEP_S = 0.5
DEFAULT_FIXED_S = 30.0
# Weight of a new measurement in the running mean: later jobs refine, a freak run does
# not dominate.
NEW_WEIGHT = 0.5


@dataclass(frozen=True)
class Rate:
    tokens_per_second: float
    source: Literal["measured", "scaled"]
    worker_kind: str | None
    # What such a job spent outside its training loop (loading, tokenizing, publishing).
    setup_seconds: float = 0.0


def default_seconds(*, parameters: int, tokens: int, steps: int) -> float:
    """The conservative training time of a job no worker has measured the like of."""
    return 6 * parameters * tokens / DEFAULT_TRAIN_FLOPS + steps * DEFAULT_STEP_S + \
        DEFAULT_FIXED_S


def rate(session: Session, *, architecture: str, objective: str, parameters: int
         ) -> Rate | None:
    """The tokens per second to expect, None if no worker measured this architecture and
    objective. Several kinds of worker may take the job: the slowest one that measured
    them (the conservative figure)."""
    rows = session.scalars(select(ThroughputRow).where(
        ThroughputRow.architecture == architecture,
        ThroughputRow.objective == objective)).all()
    nearest: dict[str, ThroughputRow] = {}
    for row in rows:  # each kind's measurement closest in size
        best = nearest.get(row.worker_kind)
        if best is None or abs(math.log(row.parameters / parameters)) < \
                abs(math.log(best.parameters / parameters)):
            nearest[row.worker_kind] = row
    if not nearest:
        return None
    slowest = min(nearest.values(),
                  key=lambda r: r.tokens_per_second * r.parameters / parameters)
    return Rate(slowest.tokens_per_second * slowest.parameters / parameters,
                "measured" if slowest.parameters == parameters else "scaled",
                slowest.worker_kind, slowest.setup_seconds)


def record(session: Session, *, worker_kind: str, architecture: str, objective: str,
           parameters: int, tokens_per_second: float, setup_seconds: float = 0.0
           ) -> ThroughputRow:
    """Fold one job's measured throughput, and the time it spent outside its training
    loop, into its row (made on first use)."""
    key = (ThroughputRow.worker_kind == worker_kind,
           ThroughputRow.architecture == architecture, ThroughputRow.objective == objective,
           ThroughputRow.parameters == parameters)
    row = session.scalar(select(ThroughputRow).where(*key).with_for_update())
    if row is None:
        row = ThroughputRow(worker_kind=worker_kind, architecture=architecture,
                            objective=objective, parameters=parameters,
                            tokens_per_second=tokens_per_second,
                            setup_seconds=setup_seconds, jobs=1,
                            worker=socket.gethostname(), updated_at=utcnow())
        try:
            with session.begin_nested():  # another worker may make the row meanwhile
                session.add(row)
            return row
        except IntegrityError:
            row = session.scalar(select(ThroughputRow).where(*key).with_for_update())
            assert row is not None
    row.tokens_per_second = (1 - NEW_WEIGHT) * row.tokens_per_second + \
        NEW_WEIGHT * tokens_per_second
    row.setup_seconds = (1 - NEW_WEIGHT) * row.setup_seconds + NEW_WEIGHT * setup_seconds
    row.jobs += 1
    row.worker = socket.gethostname()
    row.updated_at = utcnow()
    return row
