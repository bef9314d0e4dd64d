"""The simple baseline of each fine-tuning task, trained on the train split and scored on
the test split, for an evaluate job's table (jobspec/evaluation.py: BASELINE_NAMES).

The data is read exactly as run_finetune reads it (records.load_splits: the same splits,
the same records), and scored by finetune/scores.py, the one owner of the metrics, so a
baseline's scores have the keys of a fine-tune's test metrics (less its eval_loss: a
baseline has no loss of the same kind) and the table compares like with like.

  - text classification (single texts or pairs): TF-IDF + logistic regression
  - regression: the training mean for every test example
  - multi-label classification: TF-IDF + one logistic regression per label, at 0.5
  - token classification: the most frequent tag of each word (lowercased)
  - extractive question answering: none
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from jobspec import FinetuneSpec
from jobspec.formats import is_entity_tagging, number
from workers.engine.failures import CorpusError
from workers.engine.finetune.records import Example, load_splits
from workers.engine.finetune.scores import (
    DEFAULT_THRESHOLD,
    classification_metrics,
    multi_label_metrics,
    regression_metrics,
    tagging_metrics,
)

# Han characters, kana and the compatibility ideographs: scripts written without spaces
# between words, where word n-grams would be whole sentences.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Bounds that keep a baseline at seconds on 10k examples: the vocabulary's size, and how
# many training texts decide whether the data is CJK.
MAX_FEATURES = 200_000
SCRIPT_SAMPLE = 1000
# Logistic regression's inverse regularisation: weak, as TF-IDF baselines use it.
C = 10.0
MAX_ITER = 2000


def baseline_scores(spec: FinetuneSpec, data: dict[str, Any]) -> dict[str, float] | None:
    """The baseline of spec.task on data (split name -> (path, format[, tag column]), as
    run_finetune takes it): trained on train, scored on test. None for a task with no
    baseline (question answering). A CorpusError when there is no test split (an evaluate
    job scores every task on one)."""
    labels = tuple(spec.labels) if spec.labels is not None else None
    splits = load_splits(spec.task, data, labels, spec.validation_fraction,
                         columns=spec.columns)
    if splits.test is None:
        raise CorpusError(f"the {spec.task.replace('_', ' ')} data has no test split: an "
                          "evaluate job scores every task on its test split; give a test "
                          "dataset or records with \"split\": \"test\"")
    train, test = splits.train, splits.test
    if spec.task == "text_classification":
        return _text_classification(train, test)
    if spec.task == "regression":
        return _regression(train, test)
    if spec.task == "multi_label_classification":
        return _multi_label(train, test, splits.labels)
    if spec.task == "token_classification":
        return _tagging(train, test, splits.labels)
    return None  # question answering: no simple baseline


def _mostly_cjk(texts: Sequence[str]) -> bool:
    """Whether most non-space characters of (a sample of) the texts are CJK."""
    sample = "".join(texts[:SCRIPT_SAMPLE])
    letters = len(sample) - sum(c.isspace() for c in sample)
    return letters > 0 and len(CJK.findall(sample)) > letters / 2


def _tfidf(texts: Sequence[str]) -> tuple[TfidfVectorizer, Any]:
    """A vectorizer fitted on texts (word 1-2-grams; character 1-3-grams for CJK text), and
    their rows (fit_transform: the texts are tokenized once)."""
    ngrams: dict[str, Any] = {"analyzer": "char", "ngram_range": (1, 3)} \
        if _mostly_cjk(texts) else {"ngram_range": (1, 2)}
    try:
        vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=MAX_FEATURES,
                                     dtype=np.float32, **ngrams)
        return vectorizer, vectorizer.fit_transform(texts)
    except ValueError:  # too few texts for min_df=2 to leave a word: keep every one
        vectorizer = TfidfVectorizer(sublinear_tf=True, max_features=MAX_FEATURES,
                                     dtype=np.float32, **ngrams)
        return vectorizer, vectorizer.fit_transform(texts)


def _features(train: list[Example], test: list[Example]) -> tuple[Any, Any]:
    """TF-IDF rows of train and test. Pairs: one vectorizer over both texts, each text's
    row side by side with their elementwise product (the words the two share) and its sum,
    the texts' cosine similarity (the rows are unit vectors). The product alone is too
    small for the regularised model to use (57.5% on pairs of the same 8 words, 5 shared,
    against unrelated ones); the one cosine column brings it to 99.5%."""
    if train[0].pair is None:  # records.load_splits: all pairs or none
        vectorizer, x_train = _tfidf([str(e.inputs) for e in train])
        return x_train, vectorizer.transform([str(e.inputs) for e in test])

    def side_by_side(first: Any, second: Any) -> Any:
        product = first.multiply(second)
        cosine = scipy.sparse.csr_matrix(np.asarray(product.sum(axis=1)))
        return scipy.sparse.hstack([first, second, product, cosine], format="csr")

    vectorizer, both = _tfidf([str(e.inputs) for e in train] + [e.pair or "" for e in train])
    x_test = side_by_side(vectorizer.transform([str(e.inputs) for e in test]),
                          vectorizer.transform([e.pair or "" for e in test]))
    return side_by_side(both[:len(train)], both[len(train):]), x_test


def _logistic_regression() -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=MAX_ITER)


def _text_classification(train: list[Example], test: list[Example]) -> dict[str, float]:
    x_train, x_test = _features(train, test)
    gold_train = [str(e.target) for e in train]
    if len(set(gold_train)) < 2:  # one label in training (others only held out): that one
        predicted = gold_train[:1] * len(test)
    else:
        model = _logistic_regression().fit(x_train, gold_train)
        predicted = [str(label) for label in model.predict(x_test)]
    return classification_metrics([str(e.target) for e in test], predicted)


def _regression(train: list[Example], test: list[Example]) -> dict[str, float]:
    """The training mean everywhere: mse is the test variance around it, and the
    correlations of a constant are 0.0 (scores.pearson)."""
    mean = float(np.mean([number(str(e.target)) for e in train]))
    gold = [number(str(e.target)) for e in test]
    return regression_metrics(gold, [mean] * len(gold))


def _multi_label(train: list[Example], test: list[Example], labels: list[str]
                 ) -> dict[str, float]:
    """One logistic regression per label on the same features; a label that is always on
    (or never) in training gets that share as its probability."""
    x_train, x_test = _features(train, test)
    probabilities = np.zeros((len(test), len(labels)))
    for j, label in enumerate(labels):
        on = np.array([label in e.target for e in train], dtype=int)
        if on.min() == on.max():
            probabilities[:, j] = float(on[0])
            continue
        model = _logistic_regression().fit(x_train, on)
        probabilities[:, j] = model.predict_proba(x_test)[:, 1]
    return multi_label_metrics([list(e.target) for e in test], probabilities.tolist(),
                               labels, DEFAULT_THRESHOLD)


def _tagging(train: list[Example], test: list[Example], labels: list[str]
             ) -> dict[str, float]:
    """Each word's most frequent training tag (lowercased; ties: first seen), unknown words
    the most frequent tag overall."""
    per_word: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for e in train:
        for word, tag in zip(e.inputs, e.target, strict=True):
            per_word[word.lower()][tag] += 1
            overall[tag] += 1
    top = overall.most_common(1)[0][0]
    best = {word: tags.most_common(1)[0][0] for word, tags in per_word.items()}
    gold = [list(e.target) for e in test]
    predicted = [[best.get(word.lower(), top) for word in e.inputs] for e in test]
    return tagging_metrics(gold, predicted, bio=is_entity_tagging(labels))
