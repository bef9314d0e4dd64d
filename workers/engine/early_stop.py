"""Early stopping: the best eval so far, a copy of its weights, and the evals since it.

The weights are copied to host memory at each improvement (one more copy of the model in
RAM), so the export can be the best eval's model, not the last one's; the counters, and the
best weights when they are not the checkpoint's own, travel in checkpoints, so a resumed
(paused, crashed) job stops where the uninterrupted one would and exports the same model."""

from typing import Any

import torch

from jobspec.common import EarlyStopping
from workers.engine.failures import ConfigError


class BestSoFar:
    def __init__(self, rule: EarlyStopping) -> None:
        self.rule = rule
        self.value: float | None = None
        self.step: int | None = None
        self.evaluation: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.waited = 0

    def update(self, point: dict[str, Any], model: torch.nn.Module) -> bool:
        """Take one eval point; True when the job should stop now."""
        metric = self.rule.metric
        if not isinstance(point.get(metric), int | float):
            reported = ", ".join(k for k, v in point.items()
                                 if k != "step" and isinstance(v, int | float))
            raise ConfigError(f"early_stopping.metric: this job's evals report {reported}, "
                              f"not {metric!r}")
        value = float(point[metric])
        delta = self.rule.min_delta
        if self.value is None or (value < self.value - delta if self.rule.minimize
                                  else value > self.value + delta):
            self.value, self.step, self.evaluation, self.waited = value, point["step"], point, 0
            self.weights = {k: v.detach().to("cpu", copy=True)
                            for k, v in model.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.rule.patience

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "evaluation": self.evaluation,
                "waited": self.waited}

    def saved(self, step: int) -> dict[str, torch.Tensor] | None:
        """The weights a checkpoint of `step` must carry besides its own: the best eval's,
        when that was an earlier step."""
        return self.weights if self.step is not None and self.step != step else None

    def restore(self, state: dict[str, Any] | None, model: torch.nn.Module, step: int,
                saved: dict[str, torch.Tensor] | None) -> None:
        """After a resume from the checkpoint of `step`: the counters, and the best weights
        (the model's own when the best is that step, else those saved with it; none from a
        checkpoint that could not carry them)."""
        if state:
            self.value, self.step = state["value"], state["step"]
            self.evaluation, self.waited = state["evaluation"], state["waited"]
            if self.step == step:
                self.weights = {k: v.detach().to("cpu", copy=True)
                                for k, v in model.state_dict().items()}
            else:
                self.weights = saved
