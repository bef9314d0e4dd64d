"""A pause on the one loop: the run checkpoints the step it reached (between two log points
and with no checkpoint due), and the resumed run's log points and model equal the
uninterrupted run's bit for bit; a cancel (a stop that is no pause) writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from jobspec import PretrainSpec, parse_spec
from tests.engine.conftest import RecordingReporter
from workers.engine import run_pretraining

pytestmark = pytest.mark.slow

PAUSE_AT, STEPS = 6, 11


class Stopping(RecordingReporter):
    """Says stop once `at` steps are done (should_stop is asked before every step); the
    stop is a pause if `pause`."""

    def __init__(self, at: int, *, pause: bool) -> None:
        super().__init__()
        self.at, self.pause, self.asked = at, pause, 0

    def should_stop(self) -> bool:
        self.asked += 1
        return self.asked > self.at

    def pausing(self) -> bool:
        return self.pause


def _curve(reporter: RecordingReporter) -> list[tuple[int, float, float, float]]:
    return [(p["step"], p["train_loss"], p["grad_norm"], p["learning_rate"])
            for p in reporter.logs]


def test_a_pause_between_log_points_resumes_exactly(en_data, tmp_path, make_spec):
    # Log every 4 steps: the pause at step 6 is inside the window of the point at 8.
    spec = parse_spec({**make_spec(max_steps=STEPS, warmup_steps=3), "log_every": 4,
                       "eval_every": 1000, "checkpoint_every": 1000})
    assert isinstance(spec, PretrainSpec)
    data = en_data  # made with the same tokenizer and sequence settings
    straight = RecordingReporter()
    done = run_pretraining(spec, str(data), str(tmp_path / "straight"), straight)

    cancelled = Stopping(PAUSE_AT, pause=False)
    assert run_pretraining(spec, str(data), str(tmp_path / "c"), cancelled).stopped
    assert cancelled.checkpoints == []

    first = Stopping(PAUSE_AT, pause=True)
    paused = run_pretraining(spec, str(data), str(tmp_path / "first"), first)
    assert paused.stopped and paused.steps == PAUSE_AT
    assert [step for step, _ in first.checkpoints] == [PAUSE_AT]
    second = RecordingReporter()
    resumed = run_pretraining(spec, str(data), str(tmp_path / "second"), second,
                              resume_from=first.checkpoints[0][1])
    assert [p["step"] for p in second.logs] == [8, STEPS]
    assert _curve(first) + _curve(second) == _curve(straight)
    assert second.logs[0]["tokens_seen"] == straight.logs[1]["tokens_seen"]
    assert resumed.final_eval == done.final_eval
    assert resumed.export_dir and done.export_dir
    ours = load_file(str(Path(resumed.export_dir) / "model.safetensors"))
    theirs = load_file(str(Path(done.export_dir) / "model.safetensors"))
    assert all(ours[k].equal(theirs[k]) for k in theirs)
