"""One cell of an evaluate job (jobspec/evaluation.py): a task's baseline, or one fine-tune
of it (the model's, the comparison model's, or the same architecture from random
initialisation), scored on the task's test split."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from jobspec import FinetuneSpec
from jobspec.evaluation import BASELINE, COMPARE_MODEL, MODEL, RANDOM_INIT
from workers.engine.baselines import baseline_scores
from workers.engine.failures import ConfigError, CorpusError
from workers.engine.finetune import run_finetune
from workers.engine.reporter import Reporter


@dataclass
class CellResult:
    """A finished cell: its test scores (numbers only), a fine-tune's optimizer steps (None
    for a baseline) and how long it took."""

    metrics: dict[str, float]
    steps: int | None
    seconds: float


def run_cell(variant: str, spec: FinetuneSpec, data: dict[str, Any], model_dir: str,
             workdir: str, reporter: Reporter, device: str | None = None
             ) -> CellResult | None:
    """Run one variant of a task: spec is the task's fine-tuning spec
    (jobspec.evaluation.finetune_spec), data its splits as run_finetune takes them,
    model_dir the variant's model (for random_init: the model whose architecture and
    tokenizer it takes, with random weights); device as run_finetune's (None: the best
    there is).

    None when the fine-tune was stopped (cancel, pause): nothing to record, the cell runs
    again from its start. A task without a baseline (question answering) gives a baseline
    cell of no metrics, recorded as done. A CorpusError when the data has no test split."""
    started = time.perf_counter()
    if variant == BASELINE:
        scores = baseline_scores(spec, data)
        return CellResult(metrics=scores or {}, steps=None,
                          seconds=time.perf_counter() - started)
    if variant in (MODEL, COMPARE_MODEL):
        result = run_finetune(spec, model_dir, data, workdir, reporter, device)
    elif variant == RANDOM_INIT:
        result = run_finetune(spec, None, data, workdir, reporter, device,
                              base_config={"config_dir": model_dir})
    else:
        raise ConfigError(f"unknown evaluation variant {variant!r}")
    if result.stopped:
        return None
    if result.test_metrics is None:  # the baseline cell checks first; a fine-tune only skips
        raise CorpusError("the data has no test split: an evaluate job scores every task on "
                          "its test split")
    # Numbers the table can hold (JSON has no NaN): a score, not a label or a flag.
    metrics = {k: float(v) for k, v in result.test_metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool)
               and math.isfinite(v)}
    return CellResult(metrics=metrics, steps=result.steps,
                      seconds=time.perf_counter() - started)
