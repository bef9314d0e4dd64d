"""Exact resume: N+M steps straight equal N steps, a stop, a resume and M more, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from workers.engine import ConfigError, PretrainConfig, run_pretraining

pytestmark = pytest.mark.slow

N, M = 6, 5


def _config(make_config, **hyperparameters) -> PretrainConfig:
    config = make_config(max_steps=N + M, warmup_steps=3, **hyperparameters)
    # Log every step; checkpoint at N (and at the end); no eval in between.
    return type(config)(**{**config.__dict__, "log_every": 1, "eval_every": 1000,
                           "checkpoint_every": N})


def _curve(reporter) -> list[tuple[float, float, float]]:
    return [(p["train_loss"], p["grad_norm"], p["learning_rate"]) for p in reporter.logs]


@pytest.mark.parametrize("hyperparameters", [
    {},  # the fast defaults: bf16 where the CPU has it, masked-only head
    {"precision": "fp32", "sparse_prediction": False, "dropout": 0.1, "micro_batch_size": 4,
     "optimizer_impl": "foreach", "attention": "sdpa"},
    {"whole_word_masking": True, "schedule": "wsd", "mask_probability": 0.3, "dropout": 0.1},
], ids=["defaults", "fp32-dropout-accumulation", "wwm-wsd"])
def test_stop_and_resume_is_bitwise_identical(en_data, tmp_path, make_reporter, make_config,
                                              hyperparameters):
    config = _config(make_config, **hyperparameters)
    straight = make_reporter()
    done = run_pretraining(config, str(en_data), str(tmp_path / "straight"), straight)

    first = make_reporter(stop_after_logs=N)  # stops after the checkpoint of step N
    stopped = run_pretraining(config, str(en_data), str(tmp_path / "first"), first)
    assert stopped.stopped and stopped.steps == N and first.checkpoints[0][0] == N
    state = json.loads((Path(first.checkpoints[0][1]) / "trainer_state.json").read_text())
    assert state["rng"]["sampler"]["position"] == N * 16  # where the data stream stood

    second = make_reporter()
    resumed = run_pretraining(config, str(en_data), str(tmp_path / "second"), second,
                              resume_from=first.checkpoints[0][1])
    assert resumed.steps == N + M and resumed.tokens_seen == done.tokens_seen
    assert [p["step"] for p in second.logs] == list(range(N + 1, N + M + 1))
    assert _curve(first) + _curve(second) == _curve(straight)
    assert resumed.final_eval == done.final_eval
    ours = load_file(str(Path(resumed.export_dir) / "model.safetensors"))
    theirs = load_file(str(Path(done.export_dir) / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours)
    assert any("resumed from the checkpoint of step 6" in m for _, m in second.events)


def test_resume_refuses_another_model(en_data, tmp_path, make_reporter, make_config):
    config = _config(make_config)
    first = make_reporter(stop_after_logs=N)
    run_pretraining(config, str(en_data), str(tmp_path / "first"), first)
    spec_model = {**config.to_dict()["model"], "size": None, "hidden_size": 64}
    other = type(config)(**{**config.__dict__,
                            "model": type(config.model)(**{**spec_model, "num_heads": 1})})
    with pytest.raises(ConfigError, match="other data or another model"):
        run_pretraining(other, str(en_data), str(tmp_path / "x"), make_reporter(),
                        resume_from=first.checkpoints[0][1])
