"""Classification and tagging metrics, written out so the engine needs no metrics library.

Macro-F1 matches scikit-learn's f1_score(average="macro"); entity scores match seqeval's
default (conlleval) mode: micro-averaged over entities, an I- tag after O or after another
type starts a new entity (IOB1 and IOB2 alike), E- ends one and S- is one (IOBES). The
tags the upload accepts as entity tags (jobspec/formats.py) are the ones scored: BILOU's L-
and U- are read as E- and S-.
"""

from __future__ import annotations

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
