"""An evaluate job's engine side (jobspec/evaluation.py): each task's baseline
(workers/engine/baselines.py) beats chance where it should, on data read as the fine-tune
reads it and scored with its metrics; random initialisation of a model directory's own
architecture (any transformers knows, not only ours) has that architecture and fresh
weights; run_cell runs each variant and says when it was stopped."""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from jobspec import FinetuneSpec
from jobspec.evaluation import BASELINE, MODEL, RANDOM_INIT, EvaluateSpec, finetune_spec
from jobspec.metrics import EVAL_LOSS
from tests.inference_helpers import bert, tokenizer
from workers.engine import CorpusError
from workers.engine.baselines import baseline_scores
from workers.engine.evaluate_cell import CellResult, run_cell
from workers.engine.finetune.model import HEADS, load_base
from workers.engine.finetune.qa import HEAD_LABELS
from workers.engine.finetune.scores import regression_metrics

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data/README.md
BROWN = {split: (str(DATA / f"brown-{split}.conll.gz"), "conll.gz")
         for split in ("train", "valid", "test")}


def _spec(task: str, **fields) -> FinetuneSpec:
    return FinetuneSpec.model_validate({"type": "finetune", "task": task, "base_model_id": "m",
                                        "dataset_id": "d", **fields})


def _jsonl(path: Path, records: list[dict]) -> dict[str, tuple[str, str]]:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return {"train": (str(path), "jsonl")}


def _test_records(name: str) -> list[dict]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as fh:
        return [r for r in map(json.loads, fh) if r["split"] == "test"]


def _majority(values: list[str]) -> float:
    return Counter(values).most_common(1)[0][1] / len(values)


# -- Baselines


def test_text_classification_baseline_beats_the_majority_class():
    scores = baseline_scores(_spec("text_classification"),
                             {"train": (str(DATA / "spamassassin-sample.jsonl.gz"), "jsonl.gz")})
    assert scores is not None and set(scores) == {"accuracy", "f1"}
    majority = _majority([r["label"] for r in _test_records("spamassassin-sample.jsonl.gz")])
    assert scores["accuracy"] > max(0.85, majority + 0.1)


def test_pair_baseline_sees_what_the_two_texts_share(tmp_path):
    """Whether the second text shares most of the first one's words (a paraphrase) or is
    unrelated: neither text tells it alone, and a linear model on the two side by side
    cannot (51%); their cosine similarity does."""
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(200)]
    records = []
    for n in range(1200):
        same = n % 2 == 0
        first = rng.sample(vocabulary, 8)
        second = rng.sample(first, 5) + rng.sample(vocabulary, 3) if same \
            else rng.sample(vocabulary, 8)
        rng.shuffle(second)
        records.append({"text": " ".join(first), "text_pair": " ".join(second),
                        "label": "same" if same else "different",
                        "split": "test" if n >= 1000 else "train"})
    scores = baseline_scores(_spec("text_classification"), _jsonl(tmp_path / "p.jsonl", records))
    assert scores is not None and scores["accuracy"] > 0.9


def test_mostly_chinese_texts_are_read_by_characters(tmp_path):
    """Chinese has no spaces between words: as words, every text would be one unseen
    token; by characters the one that decides the label is found."""
    rng = random.Random(0)
    characters = [chr(c) for c in range(0x4E00, 0x4E00 + 300)]
    records = []
    for n in range(600):
        positive = n % 2 == 0
        text = "".join(rng.sample(characters, 12)) + ("好" if positive else "差")
        records.append({"text": text, "label": "positive" if positive else "negative",
                        "split": "test" if n >= 500 else "train"})
    scores = baseline_scores(_spec("text_classification"), _jsonl(tmp_path / "zh.jsonl", records))
    assert scores is not None and scores["accuracy"] > 0.95


def test_regression_baseline_is_the_training_mean():
    data = {"train": (str(DATA / "en-regression.jsonl.gz"), "jsonl.gz")}
    scores = baseline_scores(_spec("regression"), data)
    assert scores is not None and set(scores) == set(regression_metrics([0.0], [0.0]))
    gold = [float(r["label"]) for r in _test_records("en-regression.jsonl.gz")]
    spread = sum((g - sum(gold) / len(gold)) ** 2 for g in gold) / len(gold)
    # A constant prediction: mse near the test variance, and no correlation (not NaN).
    assert math.isfinite(scores["mse"]) and spread <= scores["mse"] < 2 * spread
    assert scores["pearson"] == scores["spearman"] == 0.0


def test_multi_label_baseline_finds_the_keyword_families():
    data = {"train": (str(DATA / "en-multilabel.jsonl.gz"), "jsonl.gz")}
    scores = baseline_scores(_spec("multi_label_classification"), data)
    assert scores is not None and set(scores) == {"micro_f1", "macro_f1", "threshold"}
    assert scores["threshold"] == 0.5
    # Every sentence given its most common label set scores far lower.
    assert scores["micro_f1"] > 0.6 and scores["macro_f1"] > 0.4


def test_tagging_baseline_beats_the_most_frequent_tag():
    scores = baseline_scores(_spec("token_classification"), BROWN)
    assert scores is not None and set(scores) == {"accuracy"}  # part-of-speech: no entities
    with gzip.open(BROWN["test"][0], "rt", encoding="utf-8") as fh:
        tags = [line.split("\t")[1] for line in fh if line.strip() and line[0] != "#"]
    assert scores["accuracy"] > _majority(tags) + 0.4


def test_entity_tagging_baseline_scores_entities(tmp_path):
    """Words seen in training get their tag (lowercased), unknown words the most frequent
    tag (O); BIO tags are scored by entity F1 as the fine-tune's are."""
    train = "John B-PER\nlives O\nin O\nParis B-LOC\n\nMary B-PER\nlikes O\nparis B-LOC\n"
    test = "mary B-PER\nvisits O\nParis B-LOC\n\nBob B-PER\nis O\nin O\nLondon B-LOC\n"
    for name, text in (("train", train), ("valid", train), ("test", test)):
        (tmp_path / f"{name}.conll").write_text(text)
    data = {s: (str(tmp_path / f"{s}.conll"), "conll") for s in ("train", "valid", "test")}
    scores = baseline_scores(_spec("token_classification"), data)
    assert scores is not None and set(scores) == {"accuracy", "precision", "recall", "f1"}
    assert scores["accuracy"] == pytest.approx(5 / 7)  # Bob and London unknown: O
    assert scores["precision"] == 1.0 and scores["recall"] == pytest.approx(0.5)


def test_no_test_split_is_refused_and_question_answering_has_no_baseline(tmp_path):
    records = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(20)]
    with pytest.raises(CorpusError, match="no test split.*evaluate job"):
        baseline_scores(_spec("text_classification"), _jsonl(tmp_path / "t.jsonl", records))
    qa = {"train": (str(DATA / "brown-qa.jsonl.gz"), "jsonl.gz")}
    assert baseline_scores(_spec("question_answering"), qa) is None


# -- Random initialisation of a model directory's architecture


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny BertForMaskedLM saved as transformers saves one (hidden 32, one layer)."""
    return str(bert(tmp_path_factory.mktemp("bert")))


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory) -> str:
    """A tiny DistilBERT, an architecture jobspec's ModelSpec has no shape for, saved with
    bfloat16 as its dtype, as Hub models often are."""
    out = tmp_path_factory.mktemp("distilbert")
    tokenizer(out / "tok")
    tok = AutoTokenizer.from_pretrained(out / "tok")
    tok.model_input_names = ["input_ids", "attention_mask"]  # DistilBERT has no segments
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2,
                              hidden_dim=64, max_position_embeddings=128)
    DistilBertForMaskedLM(config).to(torch.bfloat16).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return str(out / "model")


@pytest.mark.parametrize("task", sorted(HEADS))
def test_random_init_takes_the_directory_architecture_not_its_weights(task, distilbert):
    labels = HEAD_LABELS if task == "question_answering" else ["a", "b", "c"]
    base = load_base(task, labels, None, {"config_dir": distilbert}, dropout=0.25,
                     attention="eager", seed=0)
    model = base.model
    assert type(model).__name__.startswith("DistilBert") and model.config.dim == 32
    assert model.config.dropout == 0.25  # the dropout given, as for a loaded base
    assert model.config.id2label == dict(enumerate(labels))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert base.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(distilbert).get_vocab()
    saved = load_file(str(Path(distilbert) / "model.safetensors"))
    ours = model.state_dict()
    # The same architecture: the encoder's weights have the saved names and shapes ...
    shared = [k for k in saved if k in ours]
    assert len(shared) > 10 and all(ours[k].shape == saved[k].shape for k in shared)
    # ... and none of their values (matrices: layer norms start at ones either way).
    weights = [k for k in shared if saved[k].dim() == 2]
    assert weights and not any(torch.equal(ours[k], saved[k].float()) for k in weights)


def test_a_half_precision_base_is_trained_in_fp32_as_random_init_is(distilbert):
    """Both variants start from fp32 weights (the loop's mixed precision keeps fp32 master
    weights), whatever dtype the base was saved in."""
    base = load_base("text_classification", ["a", "b"], distilbert, None, dropout=None,
                     attention="eager", seed=0)
    assert {p.dtype for p in base.model.parameters()} == {torch.float32}


# -- run_cell


def _suite_spec(**hyperparameters) -> FinetuneSpec:
    evaluate = EvaluateSpec.model_validate({
        "type": "evaluate", "model_id": "m", "suite": [
            {"task": "text_classification", "dataset_id": "d"}],
        "hyperparameters": {"max_steps": 5, "batch_size": 8, "sequence_length": 32,
                            **hyperparameters}})
    return FinetuneSpec.model_validate({**finetune_spec(evaluate, 0), "log_every": 1})


@pytest.mark.slow
def test_run_cell_runs_each_variant_on_the_test_split(tiny_bert, tmp_path, make_reporter):
    """Fine-tunes (the model's, random init's) give numbers only and their steps; their
    scores have a baseline's keys (and a loss of their own); a stopped one gives None."""
    with gzip.open(DATA / "spamassassin-sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        records = [{**r, "text": r["text"][:300]} for r in map(json.loads, fh)]
    few = [r for split, n in (("train", 150), ("valid", 40), ("test", 60))
           for r in [r for r in records if r["split"] == split][:n]]
    data = _jsonl(tmp_path / "spam.jsonl", few)
    spec = _suite_spec()
    cells = {variant: run_cell(variant, spec, data, tiny_bert, str(tmp_path / variant),
                               make_reporter(), device="cpu")
             for variant in (BASELINE, MODEL, RANDOM_INIT)}
    baseline, model, random_init = cells[BASELINE], cells[MODEL], cells[RANDOM_INIT]
    assert isinstance(baseline, CellResult) and baseline.steps is None
    for cell in (model, random_init):
        assert isinstance(cell, CellResult) and cell.steps == 5 and cell.seconds > 0
        assert set(cell.metrics) == set(baseline.metrics) | {EVAL_LOSS}
        assert all(isinstance(v, float) and math.isfinite(v) for v in cell.metrics.values())
    assert model.metrics != random_init.metrics  # not the same start
    stopped = run_cell(RANDOM_INIT, spec, data, tiny_bert, str(tmp_path / "stopped"),
                       make_reporter(stop_after_logs=2), device="cpu")
    assert stopped is None
