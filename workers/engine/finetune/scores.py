"""Classification, tagging, regression and multi-label metrics, written out so the engine
needs no metrics library.

Macro-F1 matches scikit-learn's f1_score(average="macro"); entity scores match seqeval's
default (conlleval) mode: micro-averaged over entities, an I- tag after O or after another
type starts a new entity (IOB1 and IOB2 alike), E- ends one and S- is one (IOBES). The
tags the upload accepts as entity tags (jobspec/formats.py) are the ones scored: BILOU's L-
and U- are read as E- and S-.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jobspec.formats import OUTSIDE, tag_parts


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of predictions equal to the gold label."""
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / max(1, len(gold))


def macro_f1(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean of the per-label F1 over the labels in gold or predictions."""
    labels = set(gold) | set(predicted)
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / max(1, len(scores))


def _ends(previous: str, position: str, previous_type: str, kind: str) -> bool:
    """Whether the entity of the previous tag ends before this one (seqeval's end_of_chunk)."""
    if previous == OUTSIDE:
        return False
    return previous in ("E", "S") or position in ("B", "S", OUTSIDE) or previous_type != kind


def _starts(previous: str, position: str, previous_type: str, kind: str) -> bool:
    """Whether an entity starts at this tag (seqeval's start_of_chunk)."""
    if position == OUTSIDE:
        return False
    return position in ("B", "S") or previous in (OUTSIDE, "E", "S") or previous_type != kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The (type, first, last) spans of an entity tag sequence (IOB1, IOB2, IOBES, BILOU)."""
    found: list[tuple[str, int, int]] = []
    start, previous, previous_type = 0, OUTSIDE, ""
    for i, tag in enumerate([*tags, OUTSIDE]):  # a trailing O closes the last entity
        position, kind = tag_parts(tag)
        if _ends(previous, position, previous_type, kind):
            found.append((previous_type, start, i - 1))
        if _starts(previous, position, previous_type, kind):
            start = i
        previous, previous_type = position, kind
    return found


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                  ) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (exact span and type)."""
    gold_set = {(n, *e) for n, tags in enumerate(gold) for e in entities(tags)}
    pred_set = {(n, *e) for n, tags in enumerate(predicted) for e in entities(tags)}
    tp = len(gold_set & pred_set)
    precision = tp / len(pred_set) if pred_set else 0.0
    recall = tp / len(gold_set) if gold_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """accuracy and macro-F1."""
    return {"accuracy": accuracy(gold, predicted), "f1": macro_f1(gold, predicted)}


def tagging_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                    bio: bool) -> dict[str, float]:
    """Token accuracy, plus entity precision/recall/F1 for entity tags
    (formats.is_entity_tagging)."""
    flat_gold = [t for tags in gold for t in tags]
    flat_pred = [t for tags in predicted for t in tags]
    scores = {"accuracy": accuracy(flat_gold, flat_pred)}
    if bio:
        scores.update(entity_scores(gold, predicted))
    return scores


# -- Regression: mean squared error and the two correlations GLUE's STS-B reports.


def mse(gold: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean squared error."""
    return sum((g - p) ** 2 for g, p in zip(gold, predicted, strict=True)) / max(1, len(gold))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation coefficient (scipy.stats.pearsonr's statistic); 0.0 when
    either side is constant (undefined there)."""
    n = len(x)
    # Tested before the sums: a constant's deviations from its computed mean are rounding
    # errors, not zero (a regression baseline's training mean everywhere gave 1.9e-15).
    if n < 2 or min(x) == max(x) or min(y) == max(y):
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return 0.0
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span (scipy's rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr's): Pearson's on tie-averaged
    ranks."""
    return pearson(ranks(x), ranks(y))


def regression_metrics(gold: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """mse, pearson and spearman."""
    return {"mse": mse(gold, predicted), "pearson": pearson(gold, predicted),
            "spearman": spearman(gold, predicted)}


# -- Multi-label: each label a yes/no decision; F1 micro-averaged over every decision and
# macro-averaged over labels (scikit-learn's f1_score(average="micro" / "macro") on the
# label indicator matrix).

# The decision thresholds tried on the validation split (the one with the best micro-F1
# is kept with the model).
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
DEFAULT_THRESHOLD = 0.5


def multi_label_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                   labels: Sequence[str]) -> dict[str, float]:
    """micro_f1 and macro_f1 of label sets over the label list (a label never in gold nor
    predicted scores 0, as scikit-learn's zero_division=0 does)."""
    tp = dict.fromkeys(labels, 0)
    fp = dict.fromkeys(labels, 0)
    fn = dict.fromkeys(labels, 0)
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = set(g), set(p)
        for label in labels:
            tp[label] += label in gs and label in ps
            fp[label] += label not in gs and label in ps
            fn[label] += label in gs and label not in ps
    t, f_p, f_n = sum(tp.values()), sum(fp.values()), sum(fn.values())
    micro = 2 * t / (2 * t + f_p + f_n) if t else 0.0
    per_label = [2 * tp[x] / (2 * tp[x] + fp[x] + fn[x]) if tp[x] else 0.0 for x in labels]
    return {"micro_f1": micro, "macro_f1": sum(per_label) / max(1, len(per_label))}


def labels_on(probabilities: Sequence[Sequence[float]], labels: Sequence[str],
              threshold: float) -> list[list[str]]:
    """The labels whose probability is at least the threshold, per example."""
    return [[label for label, p in zip(labels, row, strict=True) if p >= threshold]
            for row in probabilities]


def best_threshold(gold: Sequence[Sequence[str]], probabilities: Sequence[Sequence[float]],
                   labels: Sequence[str]) -> float:
    """The threshold of THRESHOLDS with the best micro-F1 (ties: the one nearest 0.5)."""
    def key(t: float) -> tuple[float, float]:
        f1 = multi_label_f1(gold, labels_on(probabilities, labels, t), labels)["micro_f1"]
        return f1, -abs(t - DEFAULT_THRESHOLD)
    return max(THRESHOLDS, key=key)


def multi_label_metrics(gold: Sequence[Sequence[str]], probabilities: Sequence[Sequence[float]],
                        labels: Sequence[str], threshold: float | None) -> dict[str, float]:
    """micro_f1, macro_f1 and the threshold they were scored at: the given one, or (None)
    the best on these examples, as on the validation split."""
    if threshold is None:
        threshold = best_threshold(gold, probabilities, labels)
    scores = multi_label_f1(gold, labels_on(probabilities, labels, threshold), labels)
    return {**scores, "threshold": threshold}
