"""Fine-tuning parts without a model: spec parsing, metrics, and reading labelled data."""

from __future__ import annotations

import gzip
import itertools
import json
import random

import pytest

from jobspec import SpecError, parse_spec
from jobspec.finetune import (
    AUTO_EPOCHS,
    AUTO_MAX_STEPS,
    AUTO_MIN_STEPS,
    auto_learning_rate,
    auto_steps,
)
from jobspec.formats import is_entity_tagging
from jobspec.pretrain import TokenizerSpec
from workers.engine import CorpusError
from workers.engine.corpus_reader import iter_documents
from workers.engine.finetune.dataset import encode_tagged
from workers.engine.finetune.records import Example, load_splits, read_examples
from workers.engine.finetune.scores import (
    classification_metrics,
    entities,
    entity_scores,
    tagging_metrics,
)
from workers.engine.masking import IGNORE_INDEX
from workers.engine.tokenizer import count_characters, train_tokenizer

SPEC = {
    "type": "finetune", "task": "text_classification", "base_model_id": "m_1",
    "dataset_id": "ds_1", "labels": None, "validation_fraction": 0.1,
    "hyperparameters": {"epochs": "auto", "max_steps": None, "batch_size": 32,
                        "learning_rate": "auto", "sequence_length": 256, "warmup_ratio": 0.1,
                        "weight_decay": 0.01, "seed": 0, "max_grad_norm": 1.0},
    "adapter": None, "log_every": 10, "eval_every": None, "checkpoint_every": None,
}


# -- Spec (the one schema, jobspec)


def test_full_spec_and_defaults_agree():
    spec = parse_spec(SPEC)
    assert spec == parse_spec({"type": "finetune", "task": "text_classification",
                               "base_model_id": "m_1", "dataset_id": "ds_1"})
    assert spec.pipeline_task == "text-classification" and spec.adapter is None
    assert spec.hyperparameters.learning_rate == "auto" and spec.eval_every is None
    assert spec.hyperparameters.epochs == "auto"
    assert parse_spec(spec.stored_spec()) == spec  # the stored spec keeps "auto"
    explicit = parse_spec({**SPEC, "hyperparameters": {"epochs": 2, "learning_rate": 1}})
    assert (explicit.hyperparameters.epochs, explicit.hyperparameters.learning_rate) == (2, 1.0)
    lora = parse_spec({**SPEC, "task": "token_classification",
                       "labels": ["B-PER", "O", "3"], "adapter": {"type": "lora"}})
    assert lora.pipeline_task == "token-classification" and lora.labels == ["B-PER", "O", "3"]
    assert (lora.adapter.r, lora.adapter.alpha, lora.adapter.dropout) == (8, 16.0, 0.05)


@pytest.mark.parametrize(("patch", "param"), [
    ({"task": None}, "task"),
    ({"task": "summarization"}, "task"),
    ({"labels": ["spam"]}, "labels"),
    ({"labels": ["a", "a"]}, "labels"),
    ({"labels": "spam,ham"}, "labels"),
    ({"validation_fraction": 0}, "validation_fraction"),
    ({"eval_every": 0}, "eval_every"),
    ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"max_steps": 1.5}}, "hyperparameters.max_steps"),
    ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"learning_rate": None}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"epochs": "3"}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"epochs": True}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"epochs": 2.0}}, "hyperparameters.epochs"),
    ({"hyperparameters": {"warmup_ratio": 1.5}}, "hyperparameters.warmup_ratio"),
    ({"hyperparameters": {"dropout": 1.0}}, "hyperparameters.dropout"),
    ({"hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size"),
    ({"hyperparameters": 3}, "hyperparameters"),
    ({"adapter": {"type": "prefix"}}, "adapter.type"),
    ({"adapter": {"r": 0}}, "adapter.r"),
])
def test_bad_values_name_the_field(patch, param):
    with pytest.raises(SpecError) as info:
        parse_spec({**SPEC, **patch})
    assert info.value.param == param


def test_auto_hyperparameters_resolve_from_model_and_data():
    assert auto_learning_rate(128) > auto_learning_rate(256) > auto_learning_rate(512) \
        > auto_learning_rate(768) > auto_learning_rate(1024)
    # AUTO_EPOCHS epochs, at least AUTO_MIN_STEPS steps, at most AUTO_MAX_STEPS unless one
    # epoch is more
    assert auto_steps(10, 32) == AUTO_MIN_STEPS
    assert auto_steps(AUTO_MIN_STEPS * 32, 32) == AUTO_EPOCHS * AUTO_MIN_STEPS \
        or AUTO_EPOCHS * AUTO_MIN_STEPS > AUTO_MAX_STEPS
    assert auto_steps(AUTO_MAX_STEPS * 32, 32) == AUTO_MAX_STEPS
    assert auto_steps(5 * AUTO_MAX_STEPS * 32, 32) == 5 * AUTO_MAX_STEPS  # one epoch


# -- Metrics


def test_entities_follow_seqeval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-PER"]
    assert entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6),
                              ("PER", 7, 7)]
    assert entities(["O", "O"]) == []
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O"], ["B-LOC", "B-ORG", "I-ORG"]]
    scores = entity_scores(gold, pred)  # 2 of 3 predicted right, 2 of 3 found
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    both = tagging_metrics(gold, pred, bio=True)
    assert both["accuracy"] == pytest.approx(4 / 6) and both["f1"] == pytest.approx(2 / 3)
    assert set(tagging_metrics(gold, pred, bio=False)) == {"accuracy"}


def test_entities_of_iobes_and_bilou_tags():
    """IOBES (and BILOU, its L- and U- for E- and S-) spans, as seqeval reads IOBES: E- ends
    an entity, S- is one, and an I- or E- after O, after E- or S-, or after another type
    starts one."""
    iobes = ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-ORG", "B-MISC", "E-MISC", "E-MISC"]
    spans = [("PER", 0, 0), ("LOC", 2, 4), ("ORG", 5, 5), ("MISC", 6, 7), ("MISC", 8, 8)]
    assert entities(iobes) == spans
    bilou = [t.replace("E-", "L-").replace("S-", "U-") for t in iobes]
    assert entities(bilou) == spans
    assert entities(["I-PER", "E-PER", "S-PER", "I-LOC"]) == [
        ("PER", 0, 1), ("PER", 2, 2), ("LOC", 3, 3)]
    # Entity scores for an IOBES tag set, which the upload takes for entity tags.
    assert is_entity_tagging(iobes) and is_entity_tagging(bilou)
    gold = [iobes]
    pred = [["S-PER", "O", "B-LOC", "E-LOC", "O", "S-ORG", "B-MISC", "E-MISC", "O"]]
    scores = tagging_metrics(gold, pred, bio=True)  # PER and ORG and the first MISC found
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 5)


def test_is_entity_tagging():
    assert is_entity_tagging(["O", "B-PER", "I-PER"]) and is_entity_tagging(["B-X", "I-X"])
    assert not is_entity_tagging(["nn", "vb", "at"]) and not is_entity_tagging(["O"])
    assert not is_entity_tagging(["O", "B-"]) and not is_entity_tagging([])


def test_macro_f1_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    gold = [rng.choice("abcd") for _ in range(300)]
    pred = [g if rng.random() < 0.6 else rng.choice("abce") for g in gold]
    ours = classification_metrics(gold, pred)
    assert ours["f1"] == pytest.approx(sklearn.f1_score(gold, pred, average="macro"))
    assert ours["accuracy"] == pytest.approx(sklearn.accuracy_score(gold, pred))


# -- Reading data


def _write(path, lines, gz=False):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, records):
    return _write(path, [json.dumps(r) for r in records])


def test_conll_columns_comments_and_spaces(tmp_path):
    path = _write(tmp_path / "a.conll.gz", [
        "# doc = 1", "-DOCSTART- -X- O", "", "The\tat\tat", "#\tnn", "cat\tnn\textra", "",
        "", "# sent 2", "Dogs NNS", "bark VB", "  "], gz=True)
    examples = read_examples("token_classification", path, "conll.gz", "the train data")
    assert [(e.inputs, e.target, e.line) for e in examples] == [
        (["The", "#", "cat"], ["at", "nn", "nn"], 4), (["Dogs", "bark"], ["NNS", "VB"], 10)]
    with pytest.raises(CorpusError, match="line 2 needs a token and a tag"):
        read_examples("token_classification", _write(tmp_path / "b.conll", ["a\tb", "lonely"]),
                      "conll", "the train data")


CONLL2003 = ["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "",
             "-DOCSTART-", "Peter NNP B-NP B-PER", "Blackburn NNP I-NP I-PER"]


@pytest.mark.parametrize(("tag_column", "tags"), [
    (None, [["NNP", "VBZ"], ["NNP", "NNP"]]),  # as before: the second column
    (1, [["NNP", "VBZ"], ["NNP", "NNP"]]),
    (2, [["B-NP", "B-VP"], ["B-NP", "I-NP"]]),
    (3, [["B-ORG", "O"], ["B-PER", "I-PER"]]),
])
def test_conll_tags_from_the_chosen_column(tmp_path, tag_column, tags):
    path = _write(tmp_path / "train.conll", CONLL2003)
    examples = read_examples("token_classification", path, "conll", "the train data",
                             tag_column)
    assert [e.inputs for e in examples] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [e.target for e in examples] == tags
    # load_splits takes the column as a third item; (path, format) pairs still work
    splits = load_splits("token_classification", {"train": (path, "conll", tag_column),
                                                  "valid": (path, "conll")}, None, 0.1)
    assert [e.target for e in splits.train] == tags
    assert [e.target for e in splits.valid] == [["NNP", "VBZ"], ["NNP", "NNP"]]


def test_conll_tag_column_missing_or_impossible(tmp_path):
    path = _write(tmp_path / "a.conll", ["a B-X", "b O"])
    with pytest.raises(CorpusError, match="line 1 needs a token and a tag in column 3"):
        read_examples("token_classification", path, "conll", "the train data", 3)
    with pytest.raises(CorpusError, match="tag column must be 1 or more"):
        read_examples("token_classification", path, "conll", "the train data", 0)


def test_splits_from_the_records_and_held_out(tmp_path):
    records = [{"text": f"t{i}", "label": ["x", "y"][i % 2], "split": s}
               for i, s in enumerate(["train"] * 8 + ["validation", "test"])]
    splits = load_splits("text_classification", {"train": (_jsonl(tmp_path / "a", records),
                                                           "jsonl")}, None, 0.1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8, 1, 1)
    assert splits.labels == ["x", "y"]
    no_split = [{k: v for k, v in r.items() if k != "split"} for r in records]
    path = _jsonl(tmp_path / "b", no_split + [{"text": "  ", "label": "x"}])  # blank: skipped
    held = load_splits("text_classification", {"train": (path, "jsonl")}, None, 0.2)
    assert (len(held.train), len(held.valid), held.test) == (8, 2, None)
    again = load_splits("text_classification", {"train": (path, "jsonl")}, None, 0.2)
    assert [e.line for e in again.valid] == [e.line for e in held.valid]  # seeded
    assert any("held out 2" in note for note in held.notes)


@pytest.mark.parametrize(("records", "labels", "message"), [
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "z"}], ("x", "y"),
     "line 2: label 'z' is not one of the labels"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], None, "only one label"),
    ([{"text": "a", "label": "x"}, {"text": "b"}], None, "line 2 needs a \"label\""),
    ([{"text": "a", "label": "x"}, {"txt": "b", "label": "y"}], None, "line 2 needs a string"),
    ([{"text": "a", "label": True}], None, "line 1 needs a \"label\""),
    ([{"text": "a", "label": "x", "split": "dev"}], None, "\"split\" must be"),
    ([{"text": "a", "label": "x", "split": "test"}, {"text": "b", "label": "y",
                                                     "split": "test"}], None,
     "the train split has no examples"),
])
def test_bad_text_data_is_a_corpus_error(tmp_path, records, labels, message):
    with pytest.raises(CorpusError, match=message):
        load_splits("text_classification", {"train": (_jsonl(tmp_path / "a", records),
                                                      "jsonl")}, labels, 0.1)


def test_bad_tagged_data_is_a_corpus_error(tmp_path):
    good = _jsonl(tmp_path / "good", [{"tokens": ["a", "b"], "tags": ["B-X", "O"]}] * 4)
    bad = _jsonl(tmp_path / "bad", [{"tokens": ["a"], "tags": ["O"]},
                                    {"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(CorpusError, match="the valid data line 2: \"tokens\" and \"tags\""):
        load_splits("token_classification", {"train": (good, "jsonl"), "valid": (bad, "jsonl")},
                    None, 0.1)
    with pytest.raises(CorpusError, match="tag 'B-X' is not one of the labels"):
        load_splits("token_classification", {"train": (good, "jsonl")}, ("O", "B-PER"), 0.1)
    with pytest.raises(CorpusError, match="cannot be used for text_classification"):
        load_splits("text_classification", {"train": (good, "conll")}, None, 0.1)
    with pytest.raises(CorpusError, match="not valid JSON"):
        load_splits("token_classification", {"train": (_write(tmp_path / "x", ["{"]), "jsonl")},
                    None, 0.1)
    with pytest.raises(CorpusError, match="the test split has no examples"):
        load_splits("token_classification",
                    {"train": (good, "jsonl"), "test": (_write(tmp_path / "e", [""]), "jsonl")},
                    None, 0.1)
    with pytest.raises(CorpusError, match="no training data"):
        load_splits("token_classification", {"valid": (good, "jsonl")}, None, 0.1)


# -- Tagged words become the pieces of running text


@pytest.mark.parametrize(("architecture", "kind"), [
    ("bert", "wordpiece"), ("roberta", "bpe"), ("gpt2", "bpe"), ("llama", "unigram")])
def test_tagged_words_get_the_pieces_of_running_text(en_corpus, architecture, kind):
    """Byte-level BPE marks a word's leading space ("Ġcat"); fed word by word without it, a
    tagged sentence would be pieces the model never saw in pretraining."""
    docs = list(itertools.islice(iter_documents(str(en_corpus), "txt"), 40))
    tokenizer = train_tokenizer(docs, count_characters(docs),
                                TokenizerSpec(type=kind, vocab_size=800), architecture, 128)
    sentences = [["The", "cat", ",", "said", "Mr.", "Smith", ",", "sat", "on", "the", "mat."],
                 ["Hello"], ["Paris", "is", "in", "France", "(", "1990", ")"]]
    tags = {t: i for i, t in enumerate(("X", "Y"))}
    examples = [Example(words, ["X"] * (len(words) - 1) + ["Y"], n)
                for n, words in enumerate(sentences)]
    encoded = encode_tagged(examples, tokenizer, tags, 128)
    for words, ids, targets, word_of_target in zip(
            sentences, encoded.input_ids, encoded.targets, encoded.word_of_target or [],
            strict=True):
        assert ids == tokenizer(" ".join(words))["input_ids"]
        assert word_of_target == list(range(len(words)))  # one labelled piece per word
        assert isinstance(targets, list)
        assert [t for t in targets if t != IGNORE_INDEX] == [0] * (len(words) - 1) + [1]
    if kind == "bpe":  # the space is on the word's first piece, as in running text
        pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids[0])
        assert any(p.startswith("Ġ") for p in pieces)
