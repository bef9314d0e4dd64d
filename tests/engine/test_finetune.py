"""Fine-tuning end to end on slices of the real data, with a tiny base model built in place:
it learns (beats the majority class / most common tag), exports for pipeline(), LoRA merges,
and a stopped run resumes exactly."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, pipeline

from jobspec import FinetuneSpec
from jobspec.finetune import auto_learning_rate, auto_steps
from tests.engine.conftest import tiny_bert_export
from workers.engine import ConfigError, CorpusError
from workers.engine.finetune import FinetuneResult, run_finetune

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data/README.md
SPAM = DATA / "spamassassin-sample.jsonl.gz"
BROWN = {split: DATA / f"brown-{split}.conll.gz"
         for split in ("train", "valid", "test")}
LOG_KEYS = {"step", "total_steps", "train_loss", "learning_rate", "grad_norm", "tokens_per_second",
            "tokens_seen"}


@pytest.fixture(scope="module")
def base(en_corpus, tmp_path_factory) -> str:
    """A tiny BertForMaskedLM export with random weights, English WordPiece."""
    return tiny_bert_export(en_corpus, tmp_path_factory.mktemp("base"), vocab_size=2000,
                            dropout=0.1)


@pytest.fixture(scope="module")
def spam(tmp_path_factory) -> str:
    """The sample's 1,200 e-mails (700 train, 180 valid, 320 test by their split field)."""
    out = tmp_path_factory.mktemp("spam") / "spam.jsonl"
    with gzip.open(SPAM, "rt", encoding="utf-8") as src:
        out.write_text("".join(src), encoding="utf-8")
    return str(out)


@pytest.fixture(scope="module")
def brown(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """The first sentences of each Brown split (train ~900, valid and test ~120 each)."""
    folder = tmp_path_factory.mktemp("brown")
    data = {}
    for split, path in BROWN.items():
        lines = 20_000 if split == "train" else 3_000
        with gzip.open(path, "rt", encoding="utf-8") as src:
            head = list(itertools.islice(src, lines))
        while head and head[-1].strip():  # end on a sentence boundary
            head.pop()
        (folder / f"{split}.conll").write_text("".join(head), encoding="utf-8")
        data[split] = (str(folder / f"{split}.conll"), "conll")
    return data


def _config(task: str, **overrides) -> FinetuneSpec:
    hp = {"epochs": 4, "batch_size": 32, "learning_rate": 2e-3, "sequence_length": 64,
          **overrides.pop("hyperparameters", {})}
    return FinetuneSpec.model_validate({
        "type": "finetune", "task": task, "hyperparameters": hp, "log_every": 5,
        "base_model_id": "m_base", "dataset_id": "ds_data", **overrides})


def _majority_share(values: list[str]) -> float:
    return Counter(values).most_common(1)[0][1] / len(values)


def test_text_classification_beats_the_majority_class(base, spam, tmp_path, make_reporter):
    reporter = make_reporter()
    result = run_finetune(_config("text_classification"), base, {"train": (spam, "jsonl")},
                          str(tmp_path), reporter, device="cpu")
    assert isinstance(result, FinetuneResult) and not result.stopped
    assert result.task == "text-classification" and result.labels == ["ham", "spam"]
    records = [json.loads(line) for line in Path(spam).read_text().splitlines()]
    test = [r for r in records if r["split"] == "test"]
    majority = _majority_share([r["label"] for r in test])
    assert result.test_metrics["accuracy"] > majority + 0.08, (result.test_metrics, majority)
    assert result.test_metrics["f1"] > 0.6  # the majority class alone scores ~0.41

    steps_per_epoch = -(-sum(r["split"] == "train" for r in records) // 32)
    assert result.steps == 4 * steps_per_epoch
    assert all(set(p) == LOG_KEYS for p in reporter.logs)
    assert [p["step"] for p in reporter.evals] == [steps_per_epoch * e for e in (1, 2, 3, 4)]
    assert all(set(p) == {"step", "eval_loss", "accuracy", "f1"} for p in reporter.evals)
    assert [s for s, _ in reporter.checkpoints] == [p["step"] for p in reporter.evals]
    assert result.final_eval == reporter.evals[-1]
    assert result.num_parameters == result.trainable_parameters > 0

    # The export is a plain model directory: pipeline() gives the answers we scored, its
    # tokenizer cutting texts where training cut them (sequence_length 64).
    config = json.loads((Path(result.export_dir) / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"}
    classify = pipeline("text-classification", model=result.export_dir, device="cpu")
    assert classify.tokenizer.model_max_length == 64
    answers = classify([r["text"] for r in test], truncation=True)
    ours = sum(a["label"] == r["label"] for a, r in zip(answers, test, strict=True)) / len(test)
    assert ours == pytest.approx(result.test_metrics["accuracy"], abs=1.5 / len(test))


def test_tagging_beats_the_most_common_tag(base, brown, tmp_path, make_reporter):
    reporter = make_reporter()
    result = run_finetune(_config("token_classification", hyperparameters={"epochs": 3}),
                          base, brown, str(tmp_path), reporter, device="cpu")
    assert result.task == "token-classification" and "nn" in result.labels
    test_tags = [line.split("\t")[1] for line in Path(brown["test"][0]).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    most_common = _majority_share(test_tags)  # "nn", about 13%
    assert result.test_metrics["accuracy"] > most_common + 0.2, (result.test_metrics,
                                                                  most_common)
    # Brown's tags are not BIO: token accuracy only.
    assert all(set(p) == {"step", "eval_loss", "accuracy"} for p in reporter.evals)

    tag = pipeline("token-classification", model=result.export_dir, device="cpu")
    answer = tag("The jury said it did not find any evidence .")
    assert answer and {a["entity"] for a in answer} <= set(result.labels)
    assert answer[0]["word"] == "the" and answer[0]["start"] == 0


def test_bio_tags_get_entity_scores(base, tmp_path, make_reporter):
    names, places = ["alice", "bob", "carol"], ["paris", "rome", "oslo"]
    records = [{"tokens": [n, "flew", "to", p, "city"], "tags": ["B-PER", "O", "O", "B-LOC",
                                                                   "I-LOC"]}
               for n, p in itertools.product(names, places)]
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records * 3))
    reporter = make_reporter()
    result = run_finetune(_config("token_classification", hyperparameters={"max_steps": 4}),
                          base, {"train": (str(path), "jsonl"), "test": (str(path), "jsonl")},
                          str(tmp_path / "run"), reporter, device="cpu")
    assert set(reporter.evals[-1]) == {"step", "eval_loss", "accuracy", "precision", "recall",
                                       "f1"}
    assert set(result.test_metrics) == {"eval_loss", "accuracy", "precision", "recall", "f1"}


def test_lora_exports_a_merged_plain_model(base, spam, tmp_path, make_reporter):
    config = _config("text_classification", adapter={"type": "lora", "r": 4},
                     hyperparameters={"max_steps": 6})
    result = run_finetune(config, base, {"train": (spam, "jsonl")}, str(tmp_path),
                          make_reporter(), device="cpu")
    assert 0 < result.trainable_parameters < result.num_parameters / 2
    weights = load_file(str(Path(result.export_dir) / "model.safetensors"))
    assert not [k for k in weights if "lora" in k or "modules_to_save" in k]
    model = AutoModelForSequenceClassification.from_pretrained(result.export_dir)
    assert sum(p.numel() for p in model.parameters()) == result.num_parameters
    answer = pipeline("text-classification", model=result.export_dir)("win money now")
    assert answer[0]["label"] in {"ham", "spam"}


def test_a_finetuned_model_is_a_base_too(base, spam, brown, tmp_path, make_reporter):
    """An imported classifier: its encoder is reused, its head (other labels) replaced."""
    first = run_finetune(_config("text_classification", hyperparameters={"max_steps": 2}),
                         base, {"train": (spam, "jsonl")}, str(tmp_path / "a"), make_reporter())
    three = _config("text_classification", labels=["ham", "spam", "phishing"],
                    hyperparameters={"max_steps": 2})
    reporter = make_reporter()
    again = run_finetune(three, first.export_dir, {"train": (spam, "jsonl")},
                         str(tmp_path / "b"), reporter)
    assert again.labels == ["ham", "spam", "phishing"]
    assert any("new head: classifier" in m and "unused" not in m for _, m in reporter.events)
    assert any("phishing" in m and "never seen" in m for _, m in reporter.events)
    tags = run_finetune(_config("token_classification", hyperparameters={"max_steps": 2}),
                        first.export_dir, {"train": brown["valid"]}, str(tmp_path / "c"),
                        make_reporter())
    assert tags.export_dir and "nn" in tags.labels


def test_random_initialisation_from_base_config(base, brown, tmp_path, make_reporter):
    config = _config("token_classification", hyperparameters={"max_steps": 3})
    result = run_finetune(config, None, {"train": brown["valid"]}, str(tmp_path),
                          make_reporter(), device="cpu",
                          base_config={"architecture": "bert", "hidden_size": 32,
                                       "num_layers": 1, "num_heads": 1, "tokenizer_dir": base})
    assert result.steps == 3 and result.num_parameters < 200_000
    with pytest.raises(ConfigError, match="tokenizer_dir"):
        run_finetune(config, None, {"train": brown["valid"]}, str(tmp_path),
                     make_reporter(), base_config={"architecture": "bert"})


def test_auto_hyperparameters_are_resolved_and_reported(base, spam, tmp_path, make_reporter):
    """Left out, epochs and learning_rate are "auto": resolved from the data's size and the
    base model's width, reported as an event, and what the run uses."""
    spec = FinetuneSpec.model_validate({
        "type": "finetune", "task": "text_classification", "base_model_id": "m",
        "dataset_id": "d", "hyperparameters": {"sequence_length": 32}, "log_every": 1,
        "eval_every": 10**6, "checkpoint_every": 10**6})
    assert spec.hyperparameters.epochs == spec.hyperparameters.learning_rate == "auto"
    reporter = make_reporter(stop_after_logs=12)  # past the warmup, then stop
    result = run_finetune(spec, base, {"train": (spam, "jsonl")}, str(tmp_path), reporter,
                          device="cpu")
    train = sum(json.loads(line)["split"] == "train"
                for line in Path(spam).read_text().splitlines())
    steps, rate = auto_steps(train, 32), auto_learning_rate(64)
    assert f"learning_rate auto: {rate:g} (hidden size 64)" in " ".join(
        m for _, m in reporter.events)
    assert f"epochs auto: {steps} steps" in " ".join(m for _, m in reporter.events)
    assert result.stopped and {p["total_steps"] for p in reporter.logs} == {steps}
    warmup = round(0.1 * steps)  # the default warmup_ratio; the rate climbs to `rate`
    assert [p["learning_rate"] for p in reporter.logs[:3]] == pytest.approx(
        [rate * n / warmup for n in (1, 2, 3)], rel=1e-4)


def test_labels_outside_the_given_set_fail_before_training(base, spam, tmp_path, make_reporter):
    config = _config("text_classification", labels=["ham", "phishing"])
    reporter = make_reporter()
    with pytest.raises(CorpusError, match=r"line \d+: label 'spam' is not one of the labels"):
        run_finetune(config, base, {"train": (spam, "jsonl")}, str(tmp_path), reporter)
    assert not reporter.logs and not reporter.checkpoints
    with pytest.raises(ConfigError, match="sequence_length"):
        run_finetune(_config("text_classification", hyperparameters={"sequence_length": 1024}),
                     base, {"train": (spam, "jsonl")}, str(tmp_path), reporter)


N, M = 4, 3


@pytest.mark.parametrize("adapter", [None, {"type": "lora", "r": 2}], ids=["full", "lora"])
def test_stop_and_resume_is_exact(base, brown, tmp_path, make_reporter, adapter):
    # Dropout on, so the RNG state must travel with the checkpoint; steps span two epochs.
    config = FinetuneSpec.model_validate({
        "task": "token_classification", "base_model_id": "m_base", "dataset_id": "ds_data",
        "adapter": adapter, "validation_fraction": 0.2,
        "hyperparameters": {"max_steps": N + M, "batch_size": 8, "learning_rate": 1e-3,
                            "sequence_length": 32, "dropout": 0.1, "warmup_ratio": 0.3},
        "log_every": 1, "eval_every": 1000, "checkpoint_every": N})
    lines = Path(brown["valid"][0]).read_text().splitlines()[:200]
    small = tmp_path / "small.conll"
    small.write_text("\n".join(lines[: max(i for i, x in enumerate(lines) if not x)]) + "\n")
    data = {"train": (str(small), "conll")}  # ~10 sentences: an epoch is a few steps

    straight = make_reporter()
    done = run_finetune(config, base, data, str(tmp_path / "straight"), straight)
    first = make_reporter(stop_after_logs=N)
    stopped = run_finetune(config, base, data, str(tmp_path / "first"), first)
    assert stopped.stopped and stopped.export_dir is None and stopped.steps == N
    second = make_reporter()
    resumed = run_finetune(config, base, data, str(tmp_path / "second"), second,
                           resume_from=first.checkpoints[0][1])

    def curve(reporter):
        return [(p["step"], p["train_loss"], p["grad_norm"], p["learning_rate"],
                 p["tokens_seen"]) for p in reporter.logs]
    assert curve(first) + curve(second) == curve(straight)
    assert all(p["total_steps"] == N + M for p in straight.logs)
    assert resumed.final_eval == done.final_eval
    ours = load_file(str(Path(resumed.export_dir) / "model.safetensors"))
    theirs = load_file(str(Path(done.export_dir) / "model.safetensors"))
    assert all(ours[k].equal(theirs[k]) for k in theirs) and ours.keys() == theirs.keys()

    other = config.model_copy(update={"validation_fraction": 0.3})
    with pytest.raises(ConfigError, match="another run"):
        run_finetune(other, base, data, str(tmp_path / "x"), make_reporter(),
                     resume_from=first.checkpoints[0][1])
