"""Early stopping ends a run whose eval metric stopped improving and exports the best eval's
weights; a resumed run stops where the uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobspec import PretrainSpec, parse_spec
from workers.engine import run_pretraining
from workers.engine.failures import ConfigError

pytestmark = pytest.mark.slow


def spec(make_spec, **early: object) -> PretrainSpec:
    # min_delta 100: no eval after the first counts as better, so the run stops after
    # `patience` more evals (every 10 steps): deterministic, whatever the losses.
    parsed = parse_spec({**make_spec(), "early_stopping": {"min_delta": 100.0, "patience": 2,
                                                          **early}})
    assert isinstance(parsed, PretrainSpec)
    return parsed


def test_a_run_that_stops_improving_ends_and_exports_its_best_eval(en_data, tmp_path,
                                                                    make_reporter, make_spec):
    reporter = make_reporter()
    result = run_pretraining(spec(make_spec), str(en_data), str(tmp_path), reporter,
                             device="cpu")
    assert not result.stopped and result.steps == 30 and result.best_step == 10
    assert [e["step"] for e in reporter.evals] == [10, 20, 30]
    assert result.final_eval == reporter.evals[0]
    assert any("early stopping at step 30 of 50" in m for _, m in reporter.events)
    exported = load_file(str(Path(result.export_dir) / "model.safetensors"))
    at_25 = load_file(str(Path(reporter.checkpoints[0][1]) / "model.safetensors"))
    name = next(k for k in exported if k.endswith("word_embeddings.weight"))
    assert not torch.equal(exported[name], at_25[name])  # not the later weights
    assert "| eval_loss | " in (Path(result.export_dir) / "README.md").read_text()


def test_a_resumed_run_stops_where_the_uninterrupted_one_does(en_data, tmp_path,
                                                              make_reporter, make_spec):
    straight = run_pretraining(spec(make_spec, patience=3), str(en_data),
                               str(tmp_path / "straight"), make_reporter(), device="cpu")
    first = make_reporter(stop_after_logs=3)  # stops after step 30; its last checkpoint: 25
    run_pretraining(spec(make_spec, patience=3), str(en_data), str(tmp_path / "a"), first,
                    device="cpu")
    assert [s for s, _ in first.checkpoints] == [25]
    second = make_reporter()
    result = run_pretraining(spec(make_spec, patience=3), str(en_data), str(tmp_path / "a"),
                             second, device="cpu", resume_from=first.checkpoints[0][1])
    # Evals at 10 (best), 20, 30, 40: three without improvement, as without the restart.
    assert result.steps == straight.steps == 40 and result.best_step == 10
    # The best eval's weights (step 10) came back from the checkpoint of step 25: the
    # export is the uninterrupted run's, to the bit.
    assert not any("did not survive the restart" in m for _, m in second.events)
    exported = load_file(str(Path(result.export_dir) / "model.safetensors"))
    expected = load_file(str(Path(straight.export_dir) / "model.safetensors"))
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_a_metric_the_evals_do_not_report_fails_the_run_saying_which_they_do(
        en_data, tmp_path, make_reporter, make_spec):
    with pytest.raises(ConfigError, match="report eval_loss, perplexity, accuracy"):
        run_pretraining(spec(make_spec, metric="f1"), str(en_data), str(tmp_path),
                        make_reporter(), device="cpu")
