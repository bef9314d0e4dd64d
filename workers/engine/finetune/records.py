"""Read labelled texts (JSON lines) and tagged sentences (CoNLL or JSON lines) into splits.

Every problem is a CorpusError naming the split and the line, so the user can fix the file.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.engine.errors import CorpusError

FORMATS = {"text_classification": ("jsonl", "jsonl.gz"),
           "token_classification": ("conll", "conll.gz", "jsonl", "jsonl.gz")}
SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
# The held-out examples depend only on the data, not on the run's seed, so runs with
# different seeds are compared on the same validation set (as in pretraining).
SPLIT_SEED = 0


@dataclass
class Example:
    """One text and its label, or one sentence's words and their tags."""

    inputs: str | list[str]
    target: str | list[str]
    line: int  # where it starts in its file, for error messages
    split: str | None = None  # the record's own "split" field, if any


@dataclass
class Splits:
    """The examples of each split and the label (or tag) set, in model id order."""

    train: list[Example]
    valid: list[Example]
    test: list[Example] | None
    labels: list[str]
    notes: list[str]  # what was decided on the user's behalf, for the event log


def _lines(path: str, fmt: str, where: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) of a plain or gzipped UTF-8 file."""
    try:
        with (gzip.open(path, "rb") if fmt.endswith(".gz") else open(path, "rb")) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CorpusError(f"{where} line {lineno} is not valid UTF-8 (bad byte at "
                                      f"column {exc.start + 1})") from None
                yield lineno, text.removeprefix("\ufeff").rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(f"{where} is not a valid gzip file ({exc})") from None
    except FileNotFoundError:
        raise CorpusError(f"{where} file not found") from None


def _record(line: str, lineno: int, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where} line {lineno} is not valid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{where} line {lineno} is not a JSON object")
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise CorpusError(f'{where} line {lineno}: "split" must be train, valid or test, '
                          f"not {split!r}")
    return record


def _labelled_texts(path: str, fmt: str, where: str) -> Iterator[Example]:
    for lineno, line in _lines(path, fmt, where):
        if not line.strip():
            continue
        record = _record(line, lineno, where)
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str):
            raise CorpusError(f'{where} line {lineno} needs a string "text"')
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise CorpusError(f'{where} line {lineno} needs a "label" (a string or an integer)')
        if text.strip():  # blank texts carry nothing to learn from
            yield Example(text, str(label), lineno, SPLITS.get(str(record.get("split"))))


def _tagged_json(path: str, fmt: str, where: str) -> Iterator[Example]:
    for lineno, line in _lines(path, fmt, where):
        if not line.strip():
            continue
        record = _record(line, lineno, where)
        tokens, tags = record.get("tokens"), record.get("tags")
        if not (isinstance(tokens, list) and isinstance(tags, list) and tokens
                and len(tokens) == len(tags)
                and all(isinstance(t, str) for t in tokens + tags)):
            raise CorpusError(f'{where} line {lineno}: "tokens" and "tags" must be non-empty '
                              "lists of strings of equal length")
        yield Example(tokens, tags, lineno, SPLITS.get(str(record.get("split"))))


def _conll(path: str, fmt: str, where: str, tag_column: int = 1) -> Iterator[Example]:
    """Column files: the token first, the tags in column tag_column (counted from 0; the
    service records it per dataset), tab- or space-separated; a blank line between
    sentences, '#' comment lines before a sentence, CoNLL-2003 -DOCSTART- lines skipped."""
    if tag_column < 1:
        raise CorpusError(f"{where}: the tag column must be 1 or more (counted from 0, column 0 "
                          f"holds the tokens), not {tag_column}")
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in _lines(path, fmt, where):
        stripped = line.strip()
        if not stripped:
            if tokens:
                yield Example(tokens, tags, start)
            tokens, tags = [], []
            continue
        if not tokens and stripped.startswith("#"):
            continue  # a comment; inside a sentence "#" is a token
        columns = stripped.split("\t") if "\t" in stripped else stripped.split()
        if columns[0] == "-DOCSTART-":  # alone on its line in some copies of CoNLL-2003
            continue
        if len(columns) <= tag_column or not columns[0].strip() \
                or not columns[tag_column].strip():
            what = "a token and a tag column" if tag_column == 1 else \
                f"a token and a tag in column {tag_column} (counted from 0)"
            raise CorpusError(f"{where} line {lineno} needs {what}")
        if not tokens:
            start = lineno
        tokens.append(columns[0].strip())
        tags.append(columns[tag_column].strip())
    if tokens:
        yield Example(tokens, tags, start)


def read_examples(task: str, path: str, fmt: str, where: str,
                  tag_column: int | None = None) -> list[Example]:
    """All examples of one file; where names it in errors (e.g. "the train data");
    tag_column: the column of a CoNLL file holding the tags (None: 1, the second)."""
    if fmt not in FORMATS[task]:
        raise CorpusError(f"{where}: format {fmt!r} cannot be used for {task}; use one of "
                          f"{', '.join(FORMATS[task])}")
    if task == "text_classification":
        return list(_labelled_texts(path, fmt, where))
    if fmt.startswith("conll"):
        return list(_conll(path, fmt, where, 1 if tag_column is None else tag_column))
    return list(_tagged_json(path, fmt, where))


def _file(given: DataFile) -> tuple[str, str, int | None]:
    """(path, format, tag column) of a split's data, given with or without the column."""
    path, fmt, *rest = given
    return path, fmt, rest[0] if rest else None


def _targets(example: Example) -> list[str]:
    return [example.target] if isinstance(example.target, str) else example.target


def _hold_out(train: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """A seeded random validation_fraction of train (at least one example on each side)."""
    if len(train) < 2:
        raise CorpusError("the train data needs at least 2 examples to hold some out for "
                          "validation; add examples or give a validation split")
    n_valid = min(len(train) - 1, max(1, round(fraction * len(train))))
    held = set(np.random.default_rng(SPLIT_SEED).permutation(len(train))[:n_valid].tolist())
    return ([e for i, e in enumerate(train) if i not in held],
            [e for i, e in enumerate(train) if i in held])


# One split's data: (path, format) or (path, format, tag column); the tag column (counted
# from 0) says where a CoNLL file keeps its tags, None meaning the second column.
DataFile = tuple[str, str] | tuple[str, str, int | None]


def load_splits(task: str, data: Mapping[str, DataFile], labels: tuple[str, ...] | None,
                validation_fraction: float) -> Splits:
    """Read the splits the caller gave; split by the records' "split" field if only train was
    given; hold out validation_fraction of train if there is no validation data."""
    unknown = set(data) - set(SPLITS)
    if unknown:
        raise CorpusError(f"unknown data split(s) {sorted(unknown)}; use train, valid, test")
    if "train" not in data:
        raise CorpusError("no training data was given")
    read: dict[str, list[Example]] = {}
    for name, given in data.items():
        path, fmt, tag_column = _file(given)
        read[SPLITS[name]] = read_examples(task, path, fmt, f"the {name} data", tag_column)
    notes = []
    if set(read) == {"train"} and any(e.split is not None for e in read["train"]):
        records = read.pop("train")
        for split in ("train", "valid", "test"):
            chosen = [e for e in records if (e.split or "train") == split]
            if chosen or split == "train":
                read[split] = chosen
        counts = ", ".join(f"{len(v)} {k}" for k, v in read.items())
        notes.append(f"split the data by its records' \"split\" field: {counts}")
    for split, examples in read.items():
        if not examples:
            raise CorpusError(f"the {split} split has no examples")
    if "valid" not in read:
        read["train"], read["valid"] = _hold_out(read["train"], validation_fraction)
        notes.append(f"held out {len(read['valid'])} of the training examples for validation "
                     f"(validation_fraction {validation_fraction}); "
                     f"{len(read['train'])} remain for training")

    kind = "label" if task == "text_classification" else "tag"
    if labels is not None:
        allowed = set(labels)
        for split, examples in read.items():
            for example in examples:
                outside = [t for t in _targets(example) if t not in allowed]
                if outside:
                    raise CorpusError(
                        f"the {split} data, line {example.line}: {kind} {outside[0]!r} is not "
                        f"one of the labels given ({', '.join(labels)})")
        seen = Counter(t for e in read["train"] for t in _targets(e))
        unused = [label for label in labels if label not in seen]
        if unused:
            notes.append(f"{kind}s never seen in the training data: {', '.join(unused)}")
        label_list = list(labels)
    else:
        label_list = sorted({t for examples in read.values() for e in examples
                             for t in _targets(e)})
    if len(label_list) < 2:
        raise CorpusError(f"the data has only one {kind} ({label_list[0]!r}); "
                          f"{task.replace('_', ' ')} needs at least 2")
    return Splits(read["train"], read["valid"], read.get("test"), label_list, notes)
