"""A sweep's decisions, made by Optuna from the trials as our rows record them: what the
next trial tries (TPE), which running trial to stop (MedianPruner), which trial is best.

The study lives only for one decision: it is rebuilt from the trials each time (their
params, their eval points, how their jobs ended), so nothing of Optuna's is stored and a
process dying between decisions loses nothing. No database here: the driver reads the rows.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from jobspec.sweep import Categorical, IntRange, LogUniform, SweepSpec
from service.domain.lifecycle import TERMINAL, JobStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per trial told


@dataclass
class TrialRecord:
    """One trial as the database records it."""

    number: int
    job_id: str
    params: dict[str, Any]
    status: str  # its job's status
    pruned: bool = False
    evals: dict[int, float] = field(default_factory=dict)  # step -> the sweep's metric
    # The job keeps its best eval's weights (early stopping): its value is its best eval.
    keeps_best: bool = False
    model_id: str | None = None

    @property
    def active(self) -> bool:
        """Not ended: it holds one of the sweep's parallel places (a paused one too)."""
        return self.status not in TERMINAL

    def value(self, minimize: bool) -> float | None:
        """What the trial scored: its model's eval (the last one, or the best one when the
        job keeps its best weights); None until it succeeded with one."""
        if self.status != JobStatus.SUCCEEDED.value or not self.evals:
            return None
        if self.keeps_best:
            return min(self.evals.values()) if minimize else max(self.evals.values())
        return self.evals[max(self.evals)]

    def best_eval(self, minimize: bool) -> float | None:
        if not self.evals:
            return None
        return min(self.evals.values()) if minimize else max(self.evals.values())


def minimizes(spec: SweepSpec) -> bool:
    return spec.direction == "minimize"


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for path, param in spec.search_space.items():
        if isinstance(param, Categorical):
            out[path] = CategoricalDistribution(param.choices)
        elif isinstance(param, IntRange):
            out[path] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[path] = FloatDistribution(param.low, param.high,
                                          log=isinstance(param, LogUniform))
    return out


def _frozen(spec: SweepSpec, trial: TrialRecord, dists: dict[str, BaseDistribution]
            ) -> FrozenTrial:
    evals = {s: v for s, v in trial.evals.items() if math.isfinite(v)}
    value = trial.value(minimizes(spec))
    if value is not None and math.isfinite(value):
        state = TrialState.COMPLETE
    elif trial.pruned:  # stopped by the pruner, though its job may take a step to stop
        state = TrialState.PRUNED
    elif trial.active:
        state = TrialState.RUNNING
    else:  # failed, cancelled, or succeeded without the metric
        state = TrialState.FAIL
    return create_trial(state=state, value=value if state is TrialState.COMPLETE else None,
                        params=trial.params, distributions=dists, intermediate_values=evals)


def _startup_trials(spec: SweepSpec) -> int:
    # Random (seeded) proposals before TPE models the results: Optuna's 10 would make a
    # small sweep a random search; a third of the trials, at least one.
    return max(1, min(10, spec.trials // 3))


def study_of(spec: SweepSpec, trials: list[TrialRecord], *, seed: int) -> optuna.Study:
    """An in-memory study holding the trials, with the sweep's sampler and pruner."""
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if spec.pruner is not None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.pruner.startup_trials,
                                             n_warmup_steps=spec.pruner.warmup_steps)
    # constant_liar: a running trial counts as a poor result, so parallel trials spread out.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup_trials(spec),
                                         constant_liar=True)
    study = optuna.create_study(direction=spec.direction or "minimize", sampler=sampler,
                                pruner=pruner)
    dists = distributions(spec)
    for trial in sorted(trials, key=lambda t: t.number):
        study.add_trial(_frozen(spec, trial, dists))
    return study


def propose(spec: SweepSpec, trials: list[TrialRecord]) -> dict[str, Any]:
    """The next trial's params ("hyperparameters.<field>" -> value)."""
    # The seed moves with the trial count: a study rebuilt with the same seed would draw
    # the same random point for every startup trial.
    study = study_of(spec, trials, seed=spec.seed + len(trials))
    return dict(study.ask(fixed_distributions=distributions(spec)).params)


def to_prune(spec: SweepSpec, trials: list[TrialRecord]) -> list[tuple[TrialRecord, int]]:
    """The running trials the pruner stops, each with the step whose eval condemned it."""
    if spec.pruner is None:
        return []
    study = study_of(spec, trials, seed=spec.seed)
    dists = distributions(spec)
    stop = []
    for trial in trials:
        if trial.status != JobStatus.RUNNING.value or trial.pruned or not trial.evals:
            continue
        frozen = _frozen(spec, trial, dists)
        if study.pruner.prune(study, frozen):
            stop.append((trial, max(trial.evals)))
    return stop


def best(spec: SweepSpec, trials: list[TrialRecord]) -> TrialRecord | None:
    """The succeeded trial with the best value (the earliest of equals) that has a model."""
    minimize = minimizes(spec)
    scored = [(t.value(minimize), t.number, t) for t in trials if t.model_id]
    finite = [(v if minimize else -v, n, t) for v, n, t in scored
              if v is not None and math.isfinite(v)]
    return min(finite, key=lambda x: (x[0], x[1]))[2] if finite else None
