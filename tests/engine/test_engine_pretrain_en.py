"""End-to-end: a tiny BERT trained on a slice of the English corpus, exported and reloaded."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer, pipeline

from workers.engine import PretrainResult, run_pretraining, verify_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def en_run(en_data, tmp_path_factory, make_reporter, make_config):
    reporter = make_reporter()
    workdir = tmp_path_factory.mktemp("en-run")
    result = run_pretraining(make_config(), str(en_data), str(workdir), reporter, device="cpu")
    return result, reporter, workdir


def test_run_completes_and_reports(en_run):
    result, reporter, _ = en_run
    assert isinstance(result, PretrainResult)
    assert not result.stopped and result.steps == 50
    assert result.tokens_seen == 50 * 16 * 64
    assert result.tokenizer_info["vocab_size"] <= 2000
    assert result.num_parameters > 0
    assert [p["step"] for p in reporter.logs] == [10, 20, 30, 40, 50]
    assert [p["step"] for p in reporter.evals] == [10, 20, 30, 40, 50]
    assert [s for s, _ in reporter.checkpoints] == [25, 50]
    for point in reporter.logs:
        assert set(point) == {"step", "total_steps", "train_loss", "learning_rate",
                              "grad_norm", "tokens_per_second", "tokens_seen"}
        assert point["total_steps"] == 50
        for key in ("train_loss", "learning_rate", "grad_norm", "tokens_per_second"):
            assert type(point[key]) is float and math.isfinite(point[key])
    for point in reporter.evals:
        assert set(point) == {"step", "eval_loss", "perplexity", "accuracy"}
        assert all(type(point[k]) is float and math.isfinite(point[k])
                   for k in ("eval_loss", "perplexity", "accuracy"))
        assert 0.0 <= point["accuracy"] <= 1.0
    assert result.final_eval == reporter.evals[-1]
    messages = " | ".join(m for _, m in reporter.events)
    assert "blocks of 64 tokens" in messages and "parameters" in messages
    assert "finished in" in messages and "BertForMaskedLM" in messages


def test_loss_decreases(en_run):
    _, reporter, _ = en_run
    first, last = reporter.evals[0]["eval_loss"], reporter.evals[-1]["eval_loss"]
    assert last < first - 0.3, (first, last)
    assert reporter.logs[-1]["train_loss"] < reporter.logs[0]["train_loss"] - 0.5
    assert reporter.logs[-1]["learning_rate"] < reporter.logs[0]["learning_rate"]  # decays


def test_checkpoint_manifest_matches_files(en_run):
    result, reporter, _ = en_run
    for step, directory in reporter.checkpoints:
        path = Path(directory)
        assert path.name == f"step-{step:08d}"
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["step"] == step
        names = {p.name for p in path.iterdir()} - {"manifest.json"}
        assert set(manifest["files"]) == names
        assert {"model.safetensors", "config.json", "optimizer.safetensors",
                "trainer_state.json"} <= names
        assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # never pickle
        for name, entry in manifest["files"].items():
            data = (path / name).read_bytes()
            assert entry["bytes"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        state = json.loads((path / "trainer_state.json").read_text())
        assert state["step"] == step and state["tokens_seen"] == step * 16 * 64
        rng = state["rng"]
        assert rng["objective"]["sampler"]["position"] + \
            rng["objective"]["sampler"]["epoch"] * result.corpus_info["train_blocks"] == step * 16
        assert "torch" in rng and "mask_generator" in rng["objective"]
        assert state["fingerprint"]["data_key"]
        assert verify_checkpoint(path)
        with safe_open(str(path / "optimizer.safetensors"), "pt") as f:
            assert any(k.endswith(".exp_avg_sq") for k in f.keys())


def test_export_loads_in_fill_mask_pipeline(en_run):
    result, _, workdir = en_run
    assert result.export_dir == str(workdir / "export")
    fill = pipeline("fill-mask", model=result.export_dir, device="cpu")
    answers = fill("the [MASK] of the")
    assert len(answers) == 5
    for answer in answers:
        assert answer["token_str"] and isinstance(answer["score"], float)
        assert answer["sequence"].startswith("the") and answer["sequence"].endswith("of the")


def test_exported_tokenizer_reloads_and_decodes(en_run):
    result, _, _ = en_run
    tok = AutoTokenizer.from_pretrained(result.export_dir)
    assert tok.mask_token == "[MASK]"
    assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_token_id
    ids = tok("Paris is the capital of France.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "paris is the capital of france."


def test_verify_checkpoint_detects_damage(en_run, tmp_path):
    _, reporter, _ = en_run
    source = Path(reporter.checkpoints[0][1])
    assert verify_checkpoint(source)
    for damage in ("truncate", "missing", "no_manifest"):
        copy = tmp_path / damage
        shutil.copytree(source, copy)
        if damage == "truncate":
            data = (copy / "optimizer.safetensors").read_bytes()
            (copy / "optimizer.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        elif damage == "missing":
            (copy / "trainer_state.json").unlink()
        else:
            (copy / "manifest.json").unlink()
        assert not verify_checkpoint(copy), damage


def test_should_stop_halts_early(en_data, tmp_path, make_reporter, make_config):
    reporter = make_reporter(stop_after_logs=1)
    config = make_config()
    config = config.model_copy(update={"log_every": 5})
    result = run_pretraining(config, str(en_data), str(tmp_path), reporter)
    assert result.stopped and result.steps == 5 and result.export_dir is None
    assert not (tmp_path / "export").exists()
    assert reporter.evals == [] and reporter.checkpoints == []


def test_same_seed_same_run(en_data, tmp_path, make_reporter, make_config):
    config = make_config(max_steps=4, warmup_steps=1)
    config = config.model_copy(update={"log_every": 1})
    runs = []
    for name in ("a", "b"):
        reporter = make_reporter()
        run_pretraining(config, str(en_data), str(tmp_path / name), reporter)
        runs.append([(p["train_loss"], p["grad_norm"]) for p in reporter.logs])
    assert runs[0] == runs[1]


def test_export_and_checkpoints_carry_a_model_card(en_run):
    result, reporter, _ = en_run
    card = (Path(result.export_dir) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")
    assert "masked language modelling" in card and "finished" in card
    assert f"{result.tokens_seen:,} tokens seen in 50 steps" in card
    assert f"| eval_loss | {result.final_eval['eval_loss']:.4f} |" in card
    assert 'pipeline("fill-mask", model="path/to/this/directory")' in card
    first = Path(reporter.checkpoints[0][1]) / "README.md"
    assert "a checkpoint: step 25 of 50" in first.read_text()
    assert verify_checkpoint(reporter.checkpoints[0][1])  # the card is in its manifest
