"""Exact resume on the one loop: N+M steps straight equal N steps, a stop, a resume and M
more, bit for bit, for every objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from jobspec import parse_spec
from workers.engine import ConfigError, prepare_data, run_pretraining

pytestmark = pytest.mark.slow

N, M = 6, 5


def _spec(make_spec, **kwargs):
    spec = make_spec(max_steps=N + M, warmup_steps=3, **kwargs)
    # Log every step; checkpoint at N (and at the end); no eval in between.
    return parse_spec({**spec, "log_every": 1, "eval_every": 1000, "checkpoint_every": N})


@pytest.fixture(scope="module")
def prepared(en_corpus, tmp_path_factory, make_reporter):
    """Prepared data per spec's data settings, made once per module."""
    made: dict[str, Path] = {}

    def get(spec) -> Path:
        from workers.engine import data_key

        key = data_key(spec)
        if key not in made:
            out = tmp_path_factory.mktemp("data")
            prepare_data(spec, str(en_corpus), "txt", str(out), make_reporter())
            made[key] = out
        return made[key]

    return get


def _curve(reporter) -> list[tuple[float, float, float]]:
    return [(p["train_loss"], p["grad_norm"], p["learning_rate"]) for p in reporter.logs]


CASES = {
    # the fast defaults: bf16 where the CPU has it, masked-only head
    "mlm-defaults": {},
    "mlm-fp32-dropout-accumulation": {
        "precision": "fp32", "sparse_prediction": False, "dropout": 0.1, "micro_batch_size": 4,
        "optimizer_impl": "foreach", "attention": "sdpa"},
    "mlm-wwm-wsd": {"whole_word_masking": True, "schedule": "wsd", "mask_probability": 0.3,
                    "dropout": 0.1},
    "roberta-mlm": {"architecture": "roberta"},
    "mlm_nsp": {"objective": "mlm_nsp", "micro_batch_size": 8, "dropout": 0.1},
    "gpt2-clm": {"architecture": "gpt2", "dropout": 0.1},
    "llama-clm": {"architecture": "llama", "micro_batch_size": 8},
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_stop_and_resume_is_bitwise_identical(prepared, tmp_path, make_reporter, make_spec,
                                              case):
    spec = _spec(make_spec, **case)
    data = str(prepared(spec))
    straight = make_reporter()
    done = run_pretraining(spec, data, str(tmp_path / "straight"), straight)

    first = make_reporter(stop_after_logs=N)  # stops after the checkpoint of step N
    stopped = run_pretraining(spec, data, str(tmp_path / "first"), first)
    assert stopped.stopped and stopped.steps == N and first.checkpoints[0][0] == N
    state = json.loads((Path(first.checkpoints[0][1]) / "trainer_state.json").read_text())
    # where the data stream stood
    assert state["rng"]["objective"]["sampler"]["position"] == N * 16

    second = make_reporter()
    resumed = run_pretraining(spec, data, str(tmp_path / "second"), second,
                              resume_from=first.checkpoints[0][1])
    assert resumed.steps == N + M and resumed.tokens_seen == done.tokens_seen
    assert [p["step"] for p in second.logs] == list(range(N + 1, N + M + 1))
    assert all(p["total_steps"] == N + M for p in second.logs)
    assert _curve(first) + _curve(second) == _curve(straight)
    assert resumed.final_eval == done.final_eval
    ours = load_file(str(Path(resumed.export_dir) / "model.safetensors"))
    theirs = load_file(str(Path(done.export_dir) / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours)
    assert any("resumed from the checkpoint of step 6" in m for _, m in second.events)


def test_resume_refuses_another_model(prepared, tmp_path, make_reporter, make_spec):
    spec = _spec(make_spec)
    data = str(prepared(spec))
    first = make_reporter(stop_after_logs=N)
    run_pretraining(spec, data, str(tmp_path / "first"), first)
    raw = spec.model_dump()
    raw["model"] = {**raw["model"], "hidden_size": 64, "num_heads": 1}
    other = parse_spec(raw)
    with pytest.raises(ConfigError, match="another run"):
        run_pretraining(other, data, str(tmp_path / "x"), make_reporter(),
                        resume_from=first.checkpoints[0][1])
