"""Read labelled texts (JSON lines, tables), tagged sentences (CoNLL, JSON lines, tables) and
questions (JSON lines, SQuAD's JSON documents) into splits.

What a record or a line must hold is jobspec/formats.py's, as the upload check reads it.
Every problem is a CorpusError naming the split and the line, so the user can fix the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from jobspec import formats
from jobspec.finetune import FINETUNE_DATA
from jobspec.formats import SPLITS, FormatError
from workers.engine.failures import CorpusError
from workers.engine.table_rows import open_table, table_roles

# The held-out examples depend only on the data, not on the run's seed, so runs with
# different seeds are compared on the same validation set (as in pretraining).
SPLIT_SEED = 0


@dataclass
class Example:
    """One text (or pair) and its label, number or labels; or one sentence's words and
    their tags."""

    inputs: str | list[str]
    target: str | list[str]  # multi-label: the labels that apply (maybe none)
    line: int  # where it starts in its file, for error messages
    split: str | None = None  # the record's own "split" field, if any
    pair: str | None = None  # the second text of a pair
    # Extractive QA: the whole record (inputs: its question; target: its answers' texts).
    qa: formats.AnsweredQuestion | None = None


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
        with (gzip.open(path, "rb") if formats.FORMATS[fmt].gzip else open(path, "rb")) as fh:
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


def _json_examples(path: str, fmt: str, where: str, kind: str) -> Iterator[Example]:
    """The records of a JSON lines file, each read as a record of `kind`."""
    read = formats.RECORD_READERS[kind]
    for lineno, line in _lines(path, fmt, where):
        if not line.strip():
            continue
        try:
            record = read(formats.json_record(line))
        except FormatError as exc:
            raise CorpusError(exc.at(lineno, where=where)) from None
        if record is None:  # blank text: nothing to learn from
            continue
        yield _example(record, lineno, where, kind)


def _document_examples(path: str, fmt: str, where: str, kind: str) -> Iterator[Example]:
    """The questions of one JSON document in SQuAD's nesting (formats.squad_questions), read
    whole (the upload refused one past formats.MAX_DOCUMENT_BYTES); an example's line is
    its question's number, counted from 1."""
    try:
        with (gzip.open(path, "rb") if formats.FORMATS[fmt].gzip else open(path, "rb")) as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(f"{where} is not a valid gzip file ({exc})") from None
    except FileNotFoundError:
        raise CorpusError(f"{where} file not found") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CorpusError(f"{where} line {line} is not valid UTF-8") from None
    del raw
    try:
        for number, question in enumerate(formats.squad_questions(text), start=1):
            yield _example(question, number, where, kind)
    except FormatError as exc:
        raise CorpusError(f"{where}: {exc.problem}") from None


def _table_examples(path: str, fmt: str, where: str, kind: str,
                    columns: dict[str, str] | None) -> Iterator[Example]:
    """The rows of a table (CSV, TSV, Parquet), each read through the job's columns map as
    a record of `kind` (formats.read_row: the rules of a JSON line's record)."""
    table = open_table(path, fmt, where)
    roles = table_roles(table, columns, where)
    for number, row in table.rows:
        try:
            record = formats.read_row(kind, row, roles)
        except FormatError as exc:
            raise CorpusError(exc.at(number, where=where, unit="row")) from None
        if record is not None:  # blank text: nothing to learn from
            yield _example(record, number, where, kind)


def _example(record: formats.Record, line: int, where: str, kind: str) -> Example:
    """A record (of any layout) as the example the tasks train on."""
    split = SPLITS.get(record.split or "")
    if isinstance(record, formats.LabelledText):
        return Example(record.text, record.label, line, split, record.text_pair)
    if isinstance(record, formats.MultiLabelledText):
        return Example(record.text, record.label_set, line, split, record.text_pair)
    if isinstance(record, formats.TaggedTokens):
        return Example(record.tokens, record.tags, line, split)
    if isinstance(record, formats.AnsweredQuestion):
        return Example(record.question, [a.text for a in record.answers], line, split,
                       qa=record)
    raise CorpusError(f"{where}: {kind.replace('_', ' ')} records have no target")


def _conll(path: str, fmt: str, where: str, tag_column: int = 1) -> Iterator[Example]:
    """Column files: the token first, the tags in column tag_column (counted from 0; the
    service records it per dataset), tab- or space-separated; a blank line between
    sentences, '#' comment lines before a sentence, CoNLL-2003 -DOCSTART- lines skipped
    (formats.conll_line)."""
    if tag_column < 1:
        raise CorpusError(f"{where}: the tag column must be 1 or more (counted from 0, column 0 "
                          f"holds the tokens), not {tag_column}")
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in _lines(path, fmt, where):
        try:
            columns = formats.conll_line(line, in_sentence=bool(tokens), tag_column=tag_column)
            if isinstance(columns, str):  # no token: a blank line ends the sentence
                if columns == formats.BLANK and tokens:
                    yield Example(tokens, tags, start)
                    tokens, tags = [], []
                continue
            token, tag = formats.conll_token(columns, tag_column)
        except FormatError as exc:
            raise CorpusError(exc.at(lineno, where=where)) from None
        if not tokens:
            start = lineno
        tokens.append(token)
        tags.append(tag)
    if tokens:
        yield Example(tokens, tags, start)


def read_examples(task: str, path: str, fmt: str, where: str,
                  tag_column: int | None = None, columns: dict[str, str] | None = None
                  ) -> list[Example]:
    """All examples of one file; where names it in errors (e.g. "the train data");
    tag_column: the column of a CoNLL file holding the tags (None: 1, the second);
    columns: a table's column for each role (None: the columns named for them)."""
    kind = FINETUNE_DATA[task]
    usable = formats.formats_holding(kind)
    if fmt not in usable:
        raise CorpusError(f"{where}: format {fmt!r} cannot be used for {task}; use one of "
                          f"{', '.join(usable)}")
    if formats.FORMATS[fmt].layout == "columns":
        return list(_conll(path, fmt, where, 1 if tag_column is None else tag_column))
    if formats.FORMATS[fmt].table:
        return list(_table_examples(path, fmt, where, kind, columns))
    if formats.FORMATS[fmt].layout == "squad":
        return list(_document_examples(path, fmt, where, kind))
    return list(_json_examples(path, fmt, where, kind))


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


# The one output of a regression model: its name as transformers gives it (the pipeline
# answers [{"label": "LABEL_0", "score": value}]).
REGRESSION_LABEL = "LABEL_0"


def _check_pairs(read: Mapping[str, list[Example]]) -> None:
    """Texts come in pairs in every record of every split, or in none."""
    first: tuple[str, Example] | None = None
    for split, examples in read.items():
        for example in examples:
            if first is None:
                first = (split, example)
            elif (example.pair is None) != (first[1].pair is None):
                has, lacks = ((first, (split, example)) if example.pair is None
                              else ((split, example), first))
                raise CorpusError(
                    f"the {lacks[0]} data, line {lacks[1].line}, has no \"text_pair\" where the "
                    f"{has[0]} data, line {has[1].line}, has one: give every record a "
                    "text_pair, or none")


# One split's data: (path, format) or (path, format, tag column); the tag column (counted
# from 0) says where a CoNLL file keeps its tags, None meaning the second column.
DataFile = tuple[str, str] | tuple[str, str, int | None]


def load_splits(task: str, data: Mapping[str, DataFile], labels: tuple[str, ...] | None,
                validation_fraction: float, columns: dict[str, str] | None = None) -> Splits:
    """Read the splits the caller gave; split by the records' "split" field if only train was
    given; hold out validation_fraction of train if there is no validation data. columns:
    a table's column for each role (the job's "columns")."""
    unknown = set(data) - set(SPLITS)
    if unknown:
        raise CorpusError(f"unknown data split(s) {sorted(unknown)}; use train, valid, test")
    if "train" not in data:
        raise CorpusError("no training data was given")
    read: dict[str, list[Example]] = {}
    for name, given in data.items():
        path, fmt, tag_column = _file(given)
        read[SPLITS[name]] = read_examples(task, path, fmt, f"the {name} data", tag_column,
                                           columns)
    notes = []
    if set(read) == {"train"} and any(e.split is not None for e in read["train"]):
        records = read.pop("train")
        for split in formats.SPLIT_NAMES:
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

    if FINETUNE_DATA[task] == formats.EXTRACTIVE_QA:  # answers are spans: no label set
        return Splits(read["train"], read["valid"], read.get("test"), [], notes)
    _check_pairs(read)
    if task == "regression":
        for split, examples in read.items():
            for example in examples:
                try:
                    formats.number(str(example.target))
                except FormatError as exc:
                    raise CorpusError(exc.at(example.line, where=f"the {split} data")) from None
        return Splits(read["train"], read["valid"], read.get("test"), [REGRESSION_LABEL],
                      notes)
    kind = "tag" if task == "token_classification" else "label"
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
