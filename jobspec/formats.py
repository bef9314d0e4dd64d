"""Data formats, defined once: the files a dataset may be, the kinds of data they hold, what
makes a record or a line valid, the split names, CoNLL columns and the entity tag scheme.

The API's upload check (service/domain/upload_inspection.py) and the engine's readers
(workers/engine/corpus_reader.py, workers/engine/finetune/records.py, .../scores.py) both read
them here, so that a file the upload accepts is one the engine can read, and a new format
or record kind is added in one place: its suffix in FORMATS, its kind in DATASET_KINDS,
its rule as a function below (raising FormatError), its reader on each side.

Stdlib only: the API imports it without torch, the engine without the service.
"""

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

# -- What a dataset holds (DatasetRow.kind, the API's "kind")

TEXT: Final = "text"  # documents: a .txt's lines, or JSON lines with "text"
# JSON lines with "text" and "label" (a class, or a number to regress on), each text alone
# or with a "text_pair" (NLI, paraphrase, question pairs; STS for a numeric label)
LABELLED_TEXT: Final = "labelled_text"
TAGGED_TOKENS: Final = "tagged_tokens"  # CoNLL columns, or JSON lines with "tokens" and "tags"
# JSON lines with "text" (and "text_pair") and "labels": the list of labels that apply
MULTI_LABELLED_TEXT: Final = "multi_labelled_text"
DatasetKind = Literal["text", "labelled_text", "tagged_tokens", "multi_labelled_text"]
DATASET_KINDS: tuple[DatasetKind, ...] = (TEXT, LABELLED_TEXT, TAGGED_TOKENS,
                                          MULTI_LABELLED_TEXT)
# How a user makes a dataset of each kind, as messages tell them.
KIND_HOLDS = {TEXT: '.txt or JSON lines with "text"',
              LABELLED_TEXT: 'JSON lines with "text" (and "text_pair") and "label"',
              TAGGED_TOKENS: 'CoNLL columns or JSON lines with "tokens" and "tags"',
              MULTI_LABELLED_TEXT: 'JSON lines with "text" (and "text_pair") and "labels" '
                                   '(a list)'}

MAX_LABELS = 1000  # distinct labels or tags a dataset (and a job's labels) may have
MAX_LABEL_CHARS = 100  # a longer "label" is a mistake (a text column), and bloats every answer


# -- Files


@dataclass(frozen=True)
class FileFormat:
    """A file a dataset may be: its name (DatasetRow.format), how its lines are read and
    which kinds of data it may hold."""

    name: str  # "jsonl.gz"
    layout: Literal["lines", "json", "columns"]  # a document a line, JSON lines, CoNLL
    holds: tuple[DatasetKind, ...]
    # A .txt is judged by its first lines: CoNLL columns make it this format instead
    # (people keep CoNLL corpora in files named train.txt).
    columns_as: str | None = None

    @property
    def suffix(self) -> str:
        return f".{self.name}"

    @property
    def gzip(self) -> bool:
        return self.name.endswith(".gz")


def _plain_and_gzip(name: str, layout: Literal["lines", "json", "columns"],
                    holds: tuple[DatasetKind, ...], columns_as: str | None = None
                    ) -> tuple[FileFormat, FileFormat]:
    return (FileFormat(name, layout, holds, columns_as),
            FileFormat(f"{name}.gz", layout, holds, columns_as and f"{columns_as}.gz"))


# In this order in messages ("use one of txt, txt.gz, jsonl, jsonl.gz").
FORMATS = {f.name: f for f in (
    *_plain_and_gzip("txt", "lines", (TEXT,), columns_as="conll"),
    *_plain_and_gzip("jsonl", "json", (TEXT, LABELLED_TEXT, TAGGED_TOKENS,
                                        MULTI_LABELLED_TEXT)),
    *_plain_and_gzip("conll", "columns", (TAGGED_TOKENS,)),
)}
_PLAIN = [f.suffix for f in FORMATS.values() if not f.gzip]
# The suffixes an upload may have, as messages list them: ".txt, .jsonl or .conll".
UPLOAD_SUFFIXES = f"{', '.join(_PLAIN[:-1])} or {_PLAIN[-1]}"


def suffix_format(filename: str) -> FileFormat | None:
    """The format a file name declares (by its suffix, case aside), or None."""
    lower = filename.lower()
    # The longest suffix first: "a.txt.gz" is txt.gz, not a file ending in ".gz".
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if lower.endswith(fmt.suffix):
            return fmt
    return None


def formats_holding(kind: str) -> tuple[str, ...]:
    """The formats a dataset of this kind may be stored as."""
    return tuple(name for name, fmt in FORMATS.items() if kind in fmt.holds)


# -- Splits

# The "split" a record may name, and the split it is read into.
SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
SPLIT_NAMES = ("train", "valid", "test")  # the splits a fine-tuning job reads, in order


# -- Errors


class FormatError(ValueError):
    """A line or record its format does not allow. Each side turns it into its own error:
    the API into CorpusInvalid (an error code and "file"), the engine into CorpusError
    naming the split's data.

    `rule` names the rule broken (the constants below); `problem` says what is wrong,
    written to follow "line N" with its own separator (" needs a ...", ': "split" ...');
    `upload_problem` is how the upload check words it, where that has differed from the
    engine since before this module (the messages users see are kept)."""

    def __init__(self, rule: str, problem: str, upload_problem: str | None = None) -> None:
        super().__init__(problem.lstrip(": "))
        self.rule, self.problem = rule, problem
        self.upload_problem = problem if upload_problem is None else upload_problem

    def at(self, line: int, *, where: str = "", upload: bool = False) -> str:
        """The message for line `line` of a file: "the train data line 3 needs a ..."."""
        problem = self.upload_problem if upload else self.problem
        return f"{where} line {line}{problem}" if where else f"line {line}{problem}"


# The rules (FormatError.rule).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NO_TEXT = "no_text"
NO_LABEL = "no_label"
BAD_LABEL = "bad_label"
BAD_TAGS = "bad_tags"
BAD_SPLIT = "bad_split"
NO_TAG = "no_tag"
BAD_PAIR = "bad_pair"
NOT_A_NUMBER = "not_a_number"
BAD_LABELS = "bad_labels"


# -- JSON lines: one record a line


@dataclass(frozen=True)
class Document:
    """A text record: a document to pretrain on."""

    text: str
    split: str | None  # the record's "split", as written ("validation" included)

    @property
    def labels(self) -> list[str]:
        """The labels or tags the record holds (a dataset's label set is theirs)."""
        return []


@dataclass(frozen=True)
class LabelledText:
    """A text (or a pair of texts) and its label: a class, or a number to regress on."""

    text: str
    label: str  # a number as JSON wrote it ("3", "0.75"); read by number() for regression
    split: str | None
    text_pair: str | None = None  # the second text of a pair (NLI, paraphrase, STS)

    @property
    def labels(self) -> list[str]:
        """Its class; a fractional number is a score, not a class: not counted as a label
        (a regression set has as many values as records)."""
        return [] if is_fraction(self.label) else [self.label]


@dataclass(frozen=True)
class MultiLabelledText:
    """A text (or pair) and the labels that apply to it (none, one or several)."""

    text: str
    label_set: list[str]  # distinct, in the record's order
    split: str | None
    text_pair: str | None = None

    @property
    def labels(self) -> list[str]:
        return self.label_set




@dataclass(frozen=True)
class TaggedTokens:
    """A sentence's words and a tag for each."""

    tokens: list[str]
    tags: list[str]
    split: str | None

    @property
    def labels(self) -> list[str]:
        return self.tags


def json_record(line: str) -> dict[str, Any]:
    """One JSON line as a record: a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FormatError(INVALID_JSON, f" is not valid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise FormatError(NOT_AN_OBJECT, " is not a JSON object", ": not a JSON object")
    return record


def record_kind(record: dict[str, Any]) -> DatasetKind:
    """The kind of data a record holds, by its fields."""
    if "tokens" in record:
        return TAGGED_TOKENS
    if "labels" in record:
        return MULTI_LABELLED_TEXT
    if "label" in record:
        return LABELLED_TEXT
    return TEXT


def record_split(record: dict[str, Any]) -> str | None:
    """The record's "split" as written (None if it names none): one of SPLITS."""
    if "split" not in record:
        return None
    split = record["split"]
    if not isinstance(split, str) or split not in SPLITS:
        raise FormatError(BAD_SPLIT, f': "split" must be train, valid or test, not {split!r}')
    return split


def text_of(record: dict[str, Any]) -> str:
    """The record's "text"."""
    text = record.get("text")
    if not isinstance(text, str):
        raise FormatError(NO_TEXT, ' needs a string "text"',
                          ' is not an object with a string "text"')
    return text


def label(value: str) -> str:
    """A label or tag: not blank, at most MAX_LABEL_CHARS characters."""
    if not value.strip():
        raise FormatError(BAD_LABEL, ": a blank label or tag")
    if len(value) > MAX_LABEL_CHARS:
        raise FormatError(BAD_LABEL, f": a label or tag longer than {MAX_LABEL_CHARS} "
                                     f"characters ({value[:20]!r}...)")
    return value


def text_pair_of(record: dict[str, Any]) -> str | None:
    """The record's "text_pair": None without one, else a string."""
    pair = record.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise FormatError(BAD_PAIR, ': "text_pair" must be a string')
    return pair


def is_fraction(value: str) -> bool:
    """Whether a label is a number written with a fraction or an exponent ("0.75", "5.0",
    "1e-3"; JSON's 5.0 included): a score to regress on, not a class ("3" is a class)."""
    try:
        int(value)
        return False
    except ValueError:
        pass
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def number(value: str) -> float:
    """A regression label as the number it is ("3", "4.25", " 1e-3"; no NaN or infinity)."""
    try:
        result = float(value)
    except ValueError:
        result = math.nan
    if not math.isfinite(result):
        raise FormatError(NOT_A_NUMBER, f': "label" must be a number for regression, not '
                                        f'{value[:40]!r}')
    return result


def document(record: dict[str, Any]) -> Document | None:
    """A text record; None if its text is blank (it holds no document)."""
    text = text_of(record)
    if not text.strip():
        return None
    return Document(text, record_split(record))


def labelled_text(record: dict[str, Any]) -> LabelledText | None:
    """A labelled-text record: a string "text" and a "label" (a string or an integer); None
    if its text is blank (nothing to learn from: skipped, whatever its label)."""
    text = text_of(record)
    if not text.strip():
        return None
    value = record.get("label")
    if isinstance(value, bool) or not isinstance(value, str | int | float) or \
            isinstance(value, float) and not math.isfinite(value):
        raise FormatError(NO_LABEL, ' needs a "label" (a string or a number)',
                          ': every record needs a "label" (a string or a number)')
    return LabelledText(text, label(str(value)), record_split(record), text_pair_of(record))


def multi_labelled_text(record: dict[str, Any]) -> MultiLabelledText | None:
    """A multi-label record: a string "text" and "labels", a list of label strings (empty
    when none applies); None if its text is blank."""
    text = text_of(record)
    if not text.strip():
        return None
    values = record.get("labels")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FormatError(BAD_LABELS, ': "labels" must be a list of strings (the labels that '
                                      "apply; [] for none)")
    if len(values) > MAX_LABELS:
        raise FormatError(BAD_LABELS, f': "labels" holds more than {MAX_LABELS} labels')
    return MultiLabelledText(text, list(dict.fromkeys(label(v) for v in values)),
                             record_split(record), text_pair_of(record))


def tagged_tokens(record: dict[str, Any]) -> TaggedTokens:
    """A tagged-tokens record: "tokens" and "tags", non-empty lists of strings of equal
    length."""
    tokens, tags = record.get("tokens"), record.get("tags")
    if not (isinstance(tokens, list) and isinstance(tags, list) and tokens
            and len(tokens) == len(tags)
            and all(isinstance(t, str) for t in tokens)
            and all(isinstance(t, str) for t in tags)):
        raise FormatError(BAD_TAGS, ': "tokens" and "tags" must be non-empty lists of strings '
                                    "of equal length",
                          ': "tokens" and "tags" must be lists of strings of equal length')
    for tag in tags:
        label(tag)
    return TaggedTokens(tokens, tags, record_split(record))


Record = Document | LabelledText | TaggedTokens | MultiLabelledText
# How a JSON record of each kind is read (None: a blank one, skipped).
RECORD_READERS: dict[str, Callable[[dict[str, Any]], Record | None]] = {
    TEXT: document, LABELLED_TEXT: labelled_text, TAGGED_TOKENS: tagged_tokens,
    MULTI_LABELLED_TEXT: multi_labelled_text}


# -- CoNLL columns: a token a line, its tags in columns after it, sentences between blank lines

DOCSTART = "-DOCSTART-"  # CoNLL-2003's document marks (a line of their own in some copies)
# What a line without a token is (conll_line).
BLANK: Final = "blank"  # ends the sentence
COMMENT: Final = "comment"  # '#' before a sentence; inside one, "#" is a token
DOCUMENT_START: Final = "docstart"
NoToken = Literal["blank", "comment", "docstart"]


def split_columns(line: str) -> list[str]:
    """The columns of a stripped CoNLL line: at tabs if the line has any, else at runs of
    spaces."""
    return line.split("\t") if "\t" in line else line.split()


def _no_tag(tag_column: int) -> FormatError:
    what = "a token and a tag column" if tag_column == 1 else \
        f"a token and a tag in column {tag_column} (counted from 0)"
    return FormatError(NO_TAG, f" needs {what}", ": a CoNLL line needs a token and a tag column")


def conll_line(line: str, *, in_sentence: bool, tag_column: int = 1) -> list[str] | NoToken:
    """The columns of one line of a CoNLL file (its tags in column tag_column, counted from
    0), or what the line is if it holds no token: BLANK, COMMENT or DOCUMENT_START."""
    stripped = line.strip()
    if not stripped:
        return BLANK
    if not in_sentence and stripped.startswith("#"):
        return COMMENT
    columns = split_columns(stripped)
    if columns[0] == DOCSTART:
        return DOCUMENT_START
    if len(columns) <= tag_column:
        raise _no_tag(tag_column)
    return columns


def conll_token(columns: list[str], tag_column: int = 1) -> tuple[str, str]:
    """A token line's token and its tag (from column tag_column)."""
    if len(columns) <= tag_column or not columns[0].strip() or not columns[tag_column].strip():
        raise _no_tag(tag_column)
    return columns[0].strip(), columns[tag_column].strip()


# -- The tag scheme of entities (named entities, chunks): one rule for the upload's guess
# at a CoNLL file's tag column and for the entity scores of fine-tuning.
#
# A tag is O (outside any entity) or a position and a type: "B-PER". Positions: B (begins)
# and I (inside), as in IOB1 and IOB2; IOBES adds E (ends) and S (a single-token entity);
# BILOU calls those L (last) and U (unit).
OUTSIDE = "O"
TAG_POSITIONS = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
ENTITY_TAG = re.compile(rf"{OUTSIDE}|[{''.join(TAG_POSITIONS)}]-\S+")


def is_entity_tagging(tags: Iterable[str] | None) -> bool:
    """True for a set of entity tags: every one O or a position and a type, not all O."""
    values = set(tags or ())
    return bool(values - {OUTSIDE}) and all(ENTITY_TAG.fullmatch(t) for t in values)


def tag_parts(tag: str) -> tuple[str, str]:
    """(position, type) of an entity tag, the position as IOBES names it (L is E, U is S);
    ("O", "") for O."""
    position, _, kind = tag.partition("-")
    return TAG_POSITIONS.get(position, position), kind
