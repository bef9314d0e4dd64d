"""Classification and tagging metrics, written out so the engine needs no metrics library.

Macro-F1 matches scikit-learn's f1_score(average="macro"); entity scores match seqeval's
default (conlleval) mode: micro-averaged over entities, an I- tag after O or after another
type starts a new entity (IOB1 and IOB2 alike).
"""

from __future__ import annotations

from collections.abc import Sequence


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


def is_bio(tags: Sequence[str]) -> bool:
    """True for a BIO/IOB tag set: every tag is O, B-<type> or I-<type>, and not all are O."""
    def ok(tag: str) -> bool:
        return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)
    return all(ok(t) for t in tags) and any(t != "O" for t in tags)


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The (type, first, last) spans of a BIO/IOB tag sequence."""
    found: list[tuple[str, int, int]] = []
    start, previous = None, ""
    for i, tag in enumerate([*tags, "O"]):  # a trailing O closes the last entity
        prefix, _, kind = tag.partition("-")
        if start is not None and (prefix in ("O", "B") or kind != previous):
            found.append((previous, start, i - 1))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start = i
        previous = kind
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
    """Token accuracy, plus entity precision/recall/F1 for a BIO tag set."""
    flat_gold = [t for tags in gold for t in tags]
    flat_pred = [t for tags in predicted for t in tags]
    scores = {"accuracy": accuracy(flat_gold, flat_pred)}
    if bio:
        scores.update(entity_scores(gold, predicted))
    return scores
