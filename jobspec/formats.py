"""Data formats, defined once: the files a dataset may be, the kinds of data they hold, what
makes a record or a line valid, the split names, CoNLL columns and the entity tag scheme.

The API's upload check (service/domain/upload_inspection.py) and the engine's readers
(workers/engine/corpus_reader.py, workers/engine/finetune/records.py, .../scores.py) both read
them here, so that a file the upload accepts is one the engine can read, and a new format
or record kind is added in one place: its suffix in FORMATS, its kind in DATASET_KINDS,
its rule as a function below (raising FormatError), its reader on each side.

Stdlib only: the API imports it without torch, the engine without the service.
"""

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
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
# SQuAD / CMRC records: JSON lines with "context", "question" and "answers"
EXTRACTIVE_QA: Final = "extractive_qa"
DatasetKind = Literal["text", "labelled_text", "tagged_tokens", "multi_labelled_text",
                      "extractive_qa"]
DATASET_KINDS: tuple[DatasetKind, ...] = (TEXT, LABELLED_TEXT, TAGGED_TOKENS,
                                          MULTI_LABELLED_TEXT, EXTRACTIVE_QA)
# How a user makes a dataset of each kind, as messages tell them.
KIND_HOLDS = {TEXT: '.txt or JSON lines with "text"',
              LABELLED_TEXT: 'JSON lines with "text" (and "text_pair") and "label"',
              TAGGED_TOKENS: 'CoNLL columns or JSON lines with "tokens" and "tags"',
              MULTI_LABELLED_TEXT: 'JSON lines with "text" (and "text_pair") and "labels" '
                                   '(a list)',
              EXTRACTIVE_QA: 'JSON lines with "context", "question" and "answers", or a '
                             'SQuAD / CMRC 2018 .json'}

MAX_LABELS = 1000  # distinct labels or tags a dataset (and a job's labels) may have
MAX_LABEL_CHARS = 100  # a longer "label" is a mistake (a text column), and bloats every answer


# -- Files


# How a file's records are laid out: a document a line, JSON lines, CoNLL columns, a
# table of delimited text (CSV, TSV: a header row, then a record a row), a Parquet table, or
# one JSON document in SQuAD's nesting (data, paragraphs, questions: squad_records below).
Layout = Literal["lines", "json", "columns", "delimited", "parquet", "squad"]
TABLE_LAYOUTS = ("delimited", "parquet")  # records whose fields are named columns


@dataclass(frozen=True)
class FileFormat:
    """A file a dataset may be: its name (DatasetRow.format), how its lines are read and
    which kinds of data it may hold."""

    name: str  # "jsonl.gz"
    layout: Layout
    holds: tuple[DatasetKind, ...]
    # A .txt is judged by its first lines: CoNLL columns make it this format instead
    # (people keep CoNLL corpora in files named train.txt).
    columns_as: str | None = None
    delimiter: str | None = None  # "delimited" layouts: "," or "\t"
    # A .json is judged by its first line: a whole JSON record on it makes it this format
    # instead (JSON lines named .json, as Hugging Face datasets' to_json writes them).
    lines_as: str | None = None
    # "delimited" layouts: True, fields may be quoted as RFC 4180 and the csv module have it
    # ("" inside quotes is a quote; a quoted field may hold the delimiter and newlines);
    # False, linear (IANA text/tab-separated-values): a line is a record and a quote is a
    # character (TSV_QUOTING below).
    quoted: bool = True
    # A .tsv is judged by its quotes: quoted fields (and no other quote) make it this format
    # instead (TSV_QUOTING below).
    quotes_as: str | None = None
    uploaded: bool = True  # a suffix an upload may have (else only what one turns out to be)

    @property
    def table(self) -> bool:
        """Records are rows with named columns (a job's "columns" map applies)."""
        return self.layout in TABLE_LAYOUTS

    @property
    def suffix(self) -> str:
        return f".{self.name}"

    @property
    def gzip(self) -> bool:
        return self.name.endswith(".gz")


def _plain_and_gzip(name: str, layout: Layout, holds: tuple[DatasetKind, ...],
                    **options: Any) -> tuple[FileFormat, FileFormat]:
    """A format and its .gz; the format a .gz may turn out to be is that one's .gz."""
    gzipped: dict[str, Any] = {key: value and f"{value}.gz" if key.endswith("_as") else value
                               for key, value in options.items()}
    return (FileFormat(name, layout, holds, **options),
            FileFormat(f"{name}.gz", layout, holds, **gzipped))


# In this order in messages ("use one of txt, txt.gz, jsonl, jsonl.gz").
FORMATS = {f.name: f for f in (
    *_plain_and_gzip("txt", "lines", (TEXT,), columns_as="conll"),
    *_plain_and_gzip("jsonl", "json", (TEXT, LABELLED_TEXT, TAGGED_TOKENS,
                                        MULTI_LABELLED_TEXT, EXTRACTIVE_QA)),
    # SQuAD's and CMRC 2018's files: one JSON document (or JSON lines, by the first line).
    *_plain_and_gzip("json", "squad", (EXTRACTIVE_QA,), lines_as="jsonl"),
    *_plain_and_gzip("conll", "columns", (TAGGED_TOKENS,)),
    # Tables: delimited text holds strings (no lists: no tagged tokens), Parquet any type.
    *_plain_and_gzip("csv", "delimited", (TEXT, LABELLED_TEXT), delimiter=","),
    # TSV as GLUE and most corpora write it (linear), or as pandas' to_csv(sep="\t") does
    # (quoted fields): TSV_QUOTING below.
    *_plain_and_gzip("tsv", "delimited", (TEXT, LABELLED_TEXT), delimiter="\t", quoted=False,
                     quotes_as="tsv-quoted"),
    *_plain_and_gzip("tsv-quoted", "delimited", (TEXT, LABELLED_TEXT), delimiter="\t",
                     uploaded=False),
    # Parquet compresses inside the file: no .gz of it.
    FileFormat("parquet", "parquet", (TEXT, LABELLED_TEXT, TAGGED_TOKENS)),
)}
_PLAIN = [f.suffix for f in FORMATS.values() if f.uploaded and not f.gzip]
# The suffixes an upload may have, as messages list them: ".txt, .jsonl, ... or .parquet".
UPLOAD_SUFFIXES = f"{', '.join(_PLAIN[:-1])} or {_PLAIN[-1]}"
GZIP_SUFFIXES = ", ".join(f.suffix for f in FORMATS.values() if f.uploaded and f.gzip)


def suffix_format(filename: str) -> FileFormat | None:
    """The format a file name declares (by its suffix, case aside), or None."""
    lower = filename.lower()
    # The longest suffix first: "a.txt.gz" is txt.gz, not a file ending in ".gz".
    for fmt in sorted((f for f in FORMATS.values() if f.uploaded), key=lambda f: -len(f.suffix)):
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

    def at(self, line: int, *, where: str = "", upload: bool = False, unit: str = "line"
           ) -> str:
        """The message for line `line` of a file: "the train data line 3 needs a ...";
        unit "row" for a table's rows (counted from 1 after the header)."""
        problem = self.upload_problem if upload else self.problem
        return f"{where} {unit} {line}{problem}" if where else f"{unit} {line}{problem}"


# The rules (FormatError.rule).
BAD_HEADER = "bad_header"
RAGGED_ROW = "ragged_row"
NO_COLUMN = "no_column"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
NO_TEXT = "no_text"
NO_LABEL = "no_label"
BAD_LABEL = "bad_label"
BAD_TAGS = "bad_tags"
BAD_SPLIT = "bad_split"
NO_TAG = "no_tag"
BAD_QUESTION = "bad_question"
BAD_ANSWER = "bad_answer"
BAD_PAIR = "bad_pair"
NOT_A_NUMBER = "not_a_number"
BAD_LABELS = "bad_labels"
BAD_DOCUMENT = "bad_document"


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
    if "question" in record or "context" in record:
        return EXTRACTIVE_QA
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


# -- Extractive question answering (SQuAD, CMRC)


@dataclass(frozen=True)
class Answer:
    """An answer to a question: its text and where it starts in the context (characters)."""

    text: str
    start: int


@dataclass(frozen=True)
class AnsweredQuestion:
    """A question about a context and its answers, spans of the context (SQuAD, CMRC); no
    answers: the context does not answer it (SQuAD 2.0's is_impossible)."""

    context: str
    question: str
    answers: tuple[Answer, ...]
    id: str | None
    split: str | None

    @property
    def labels(self) -> list[str]:
        return []


MAX_ANSWERS = 100  # answers a question may list (SQuAD's dev set gives up to 6)


def _answer_pairs(record: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(text, answer_start) of each of "answers", written as SQuAD's files write them (a list
    of {"text", "answer_start"}) or as Hugging Face datasets do ({"text": [...],
    "answer_start": [...]})."""
    answers = record.get("answers", [])
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or \
                len(texts) != len(starts):
            raise FormatError(BAD_ANSWER, ': "answers" as an object needs lists "text" and '
                                          '"answer_start" of equal length')
        return list(zip(texts, starts, strict=True))
    if not isinstance(answers, list) or \
            not all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in answers):
        raise FormatError(BAD_ANSWER, ': "answers" must be a list of {"text", "answer_start"} '
                                      "([] for a question the context does not answer)")
    return [(a["text"], a["answer_start"]) for a in answers]


def answered_question(record: dict[str, Any]) -> AnsweredQuestion:
    """A SQuAD-style record: non-blank strings "context" and "question", and "answers", each
    a non-blank "text" that "answer_start" (a character offset, from 0) points at in the
    context. No answers (or SQuAD 2.0's "is_impossible": true): an unanswerable question."""
    context, question = record.get("context"), record.get("question")
    if not isinstance(context, str) or not context.strip():
        raise FormatError(BAD_QUESTION, ' needs a non-blank string "context"')
    if not isinstance(question, str) or not question.strip():
        raise FormatError(BAD_QUESTION, ' needs a non-blank string "question"')
    pairs = _answer_pairs(record)
    impossible = record.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise FormatError(BAD_ANSWER, ': "is_impossible" must be true or false')
    if impossible and pairs:
        raise FormatError(BAD_ANSWER, ': "is_impossible" is true but "answers" is not empty')
    if len(pairs) > MAX_ANSWERS:
        raise FormatError(BAD_ANSWER, f': more than {MAX_ANSWERS} "answers"')
    answers = []
    for i, (text, start) in enumerate(pairs):
        if not isinstance(text, str) or not text.strip():
            raise FormatError(BAD_ANSWER, f": answers[{i}].text must be a non-blank string")
        if isinstance(start, bool) or not isinstance(start, int):
            raise FormatError(BAD_ANSWER, f": answers[{i}].answer_start must be an integer")
        if start < 0 or context[start:start + len(text)] != text:
            there = context[max(start, 0):max(start, 0) + len(text)]
            raise FormatError(BAD_ANSWER, f": answers[{i}].answer_start ({start}) does not "
                                          f"point at answers[{i}].text ({text[:40]!r}) in "
                                          f"\"context\", which reads {there[:40]!r} there")
        answers.append(Answer(text, start))
    id_ = record.get("id")
    return AnsweredQuestion(context, question, tuple(answers),
                            None if id_ is None else str(id_), record_split(record))


Record = Document | LabelledText | TaggedTokens | MultiLabelledText | AnsweredQuestion
# How a JSON record of each kind is read (None: a blank one, skipped).
RECORD_READERS: dict[str, Callable[[dict[str, Any]], Record | None]] = {
    TEXT: document, LABELLED_TEXT: labelled_text, TAGGED_TOKENS: tagged_tokens,
    MULTI_LABELLED_TEXT: multi_labelled_text, EXTRACTIVE_QA: answered_question}


# -- One JSON document in SQuAD's nesting, as SQuAD v1.1 and v2.0, CMRC 2018 and DRCD ship:
#   {"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [
#     {"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?, ...}]}]}]}
# Each question is the flat record a JSON line would be ({**question, "context": its
# paragraph's}), read by answered_question with its rules. The document's text is read whole
# (a paragraph's objects at a time, not the document's), so it is bounded: past this, JSON
# lines, read a line at a time, are the way.
MAX_DOCUMENT_BYTES = 256 * 1024**2  # SQuAD 2.0's train set is about 40 MB
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODE = json.JSONDecoder().raw_decode


def holds_json_lines(first_line: str) -> bool:
    """Whether a .json whose first non-blank line is this holds JSON lines: the line is a
    whole JSON object, and not a document holding "data" (a SQuAD file on one line)."""
    try:
        record = json_record(first_line)
    except FormatError:
        return False
    return not isinstance(record.get("data"), list)


class _Walk:
    """A JSON document read from the outside in: an object's members and a list's items one
    at a time, and only the values asked for decoded whole."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def _next(self) -> str:
        """The next character that is not space ("" at the end), not consumed."""
        space = _SPACE.match(self.text, self.at)
        assert space is not None  # "*" matches nothing too
        self.at = space.end()
        return self.text[self.at:self.at + 1]

    def invalid(self, message: str, at: int | None = None) -> FormatError:
        error = json.JSONDecodeError(message, self.text, self.at if at is None else at)
        return FormatError(INVALID_JSON, f"the document is not valid JSON: {error.msg} at "
                                         f"line {error.lineno}, column {error.colno}")

    def value(self) -> Any:
        self._next()
        try:
            value, self.at = _DECODE(self.text, self.at)
        except json.JSONDecodeError as exc:
            raise self.invalid(exc.msg, exc.pos) from None
        return value

    def _each(self, opening: str, closing: str, where: str, what: str) -> Iterator[None]:
        """Once for each member or item of the object or list at `where`, the caller reading
        it each time."""
        if self._next() != opening:
            self.value()  # if it is not JSON at all, that is what to say
            raise FormatError(BAD_DOCUMENT, f"{where} must be {what}")
        self.at += 1
        if self._next() == closing:
            self.at += 1
            return
        while True:
            yield
            found = self._next()
            self.at += 1
            if found == closing:
                return
            if found != ",":
                raise self.invalid("Expecting ',' delimiter", self.at - 1)

    def keys(self, where: str, what: str) -> Iterator[str]:
        """The keys of the object at `where`, each followed by its value for the caller."""
        for _ in self._each("{", "}", where, what):
            if self._next() != '"':
                raise self.invalid("Expecting property name enclosed in double quotes")
            key = self.value()
            if self._next() != ":":
                raise self.invalid("Expecting ':' delimiter")
            self.at += 1
            yield key

    def items(self, where: str, what: str) -> Iterator[int]:
        """The index of each item of the list at `where`, each for the caller to read."""
        return (index for index, _ in enumerate(self._each("[", "]", where, what)))

    def end(self) -> None:
        if self._next():
            raise self.invalid("Extra data")


def squad_records(text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of each question of a document in SQuAD's nesting, in order: where it
    is ("data[0].paragraphs[3].qas[1]") and the flat record a JSON line of it would be. Its
    FormatErrors' problems begin with where they are (whole messages, not for a line's)."""
    walk = _Walk(text)
    articles = None
    for key in walk.keys("the document", 'a JSON object holding "data" (SQuAD\'s layout), '
                                         "or JSON lines (a record a line)"):
        if key != "data":
            walk.value()  # "version", and whatever else: not read
            continue
        articles = walk.items('"data"', 'a list of {"title", "paragraphs"}')
        for i in articles:
            paragraphs = None
            for key in walk.keys(f"data[{i}]", 'a JSON object holding "paragraphs"'):
                if key != "paragraphs":
                    walk.value()  # "title"
                    continue
                paragraphs = walk.items(f"data[{i}].paragraphs",
                                        'a list of {"context", "qas"}')
                for j in paragraphs:
                    yield from _paragraph_records(walk.value(), f"data[{i}].paragraphs[{j}]")
            if paragraphs is None:
                raise FormatError(BAD_DOCUMENT, f'data[{i}] has no "paragraphs"')
    if articles is None:
        raise FormatError(BAD_DOCUMENT, 'the document has no "data": SQuAD\'s layout is '
                                        '{"data": [{"paragraphs": [{"context", "qas"}]}]}')
    walk.end()


def _paragraph_records(paragraph: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(paragraph, dict):
        raise FormatError(BAD_DOCUMENT, f'{where} must be a JSON object with "context" and '
                                        '"qas"')
    context = paragraph.get("context")
    if not isinstance(context, str) or not context.strip():
        raise FormatError(BAD_QUESTION, f'{where} needs a non-blank string "context"')
    questions = paragraph.get("qas")
    if not isinstance(questions, list):
        raise FormatError(BAD_DOCUMENT, f'{where}: "qas" must be a list of questions')
    for k, question in enumerate(questions):
        if not isinstance(question, dict):
            raise FormatError(NOT_AN_OBJECT, f"{where}.qas[{k}] is not a JSON object")
        yield f"{where}.qas[{k}]", {**question, "context": context}


def squad_questions(text: str) -> Iterator[AnsweredQuestion]:
    """The questions of a document in SQuAD's nesting, read as JSON lines' records are
    (answered_question); a FormatError names where the broken one is."""
    for where, record in squad_records(text):
        try:
            yield answered_question(record)
        except FormatError as exc:
            raise FormatError(exc.rule, f"{where}{exc.problem}",
                              f"{where}{exc.upload_problem}") from None


# -- Tables: CSV, TSV and Parquet. A record is a row, and each of its fields (a role:
# "text", "label", ...) is read from a column: the one a job's "columns" map names for the
# role, else the first column named as ROLE_NAMES says. Rows become the same dicts a JSON
# line is (table_record), and RECORD_READERS apply to them as to JSON lines.

# The roles a column may play: the fields of a record that a kind's reader reads. A job's
# "columns" maps roles to column names; a task that reads another field adds its role here.
ROLES: list[str] = ["text", "text_pair", "label", "labels", "tokens", "tags",
                    "question", "context", "answers", "split"]
# A role the job's "columns" leaves out is played by the first column with one of these
# names (case and surrounding spaces aside); a role with none is not read.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "sentence", "sentence1", "premise", "question1", "content", "document",
             "body", "review"),
    "text_pair": ("text_pair", "sentence2", "hypothesis", "question2"),
    "label": ("label", "gold_label", "class", "category", "target", "score"),
    "labels": ("labels",),
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "pos_tags"),
    "question": ("question",),
    "context": ("context",),
    "answers": ("answers",),
    "split": ("split",),
}
# The roles each kind of data reads (its reader's fields); a table holds the first kind
# whose roles it has, so the more specific come first.
KIND_ROLES: dict[str, tuple[str, ...]] = {
    EXTRACTIVE_QA: ("question", "context", "answers"), TAGGED_TOKENS: ("tokens", "tags"),
    MULTI_LABELLED_TEXT: ("text", "labels"), LABELLED_TEXT: ("text", "label"),
    TEXT: ("text",)}
# Roles read when present, beside a kind's own (KIND_ROLES).
OPTIONAL_ROLES: dict[str, tuple[str, ...]] = {
    LABELLED_TEXT: ("text_pair",), MULTI_LABELLED_TEXT: ("text_pair",)}
MAX_TABLE_COLUMNS = 128
MAX_COLUMN_NAME_CHARS = 200
# The types a table's column is shown as (a dataset's "fields"): delimited text is read as
# strings, and a column is "integer" or "number" when every non-empty cell reads as one.
COLUMN_TYPES = ("string", "integer", "number", "boolean", "list", "other")
QUOTE = '"'  # a quoted field's quote (CSV, quoted TSV): "" inside is one quote

# TSV_QUOTING: how a .tsv is read, decided once per file at upload and recorded as its format.
# A TSV is linear (format "tsv"), as GLUE's (MNLI, QQP, SST-2, CoLA...) and most corpora are
# written and as Hugging Face datasets reads them (csv.QUOTE_NONE): a line is a record, split
# at tabs, and a quote is a character ('"Yes," he said' and a lone '"' are text). But pandas'
# to_csv(sep="\t") and the csv module quote a field that holds a quote, tab or newline
# ('"He said ""hi"""'), and read linearly their quotes would stay in the text. So a .tsv in
# which every field holding a quote is a quoted field on its line (quoted_tsv_values: in
# quotes, the quotes inside doubled; a tab inside allowed, a newline not) is read with its
# quotes (format "tsv-quoted", read as a CSV is); one quote anywhere else (a quote inside a
# field, a quote that does not close on its line) makes the whole file linear. A file with
# no quote reads the same either way ("tsv"). The rule is deterministic per file; the upload
# records the format, so that the engine and the preview read the file the same way.


def quoted_tsv_values(line: str) -> list[str] | None:
    """The values of a TSV line (without its line ending) read with quoting, if each of its
    fields holding a quote is a quoted field (RFC 4180, on this line); else None."""
    values: list[str] = []
    at = 0
    while True:
        field = _TSV_FIELD.match(line, at)
        if field is None:
            return None
        quoted, plain = field.groups()
        values.append(plain if quoted is None else quoted.replace('""', QUOTE))
        at = field.end()
        if at == len(line):
            return values
        at += 1  # the tab


# A TSV field: quoted (its quotes doubled) or holding no quote, up to a tab or the end.
_TSV_FIELD = re.compile(r'"((?:[^"]|"")*)"(?=\t|\Z)|([^"\t]*)(?=\t|\Z)')


class NoColumn(FormatError):
    """A role's column the table does not have (`role`: the role, as "columns" names it)."""

    def __init__(self, role: str, problem: str) -> None:
        super().__init__(NO_COLUMN, problem)
        self.role = role


def csv_dialect(fmt: FileFormat) -> dict[str, Any]:
    """The csv module's reading of a quoted delimited format (both sides read with it)."""
    return {"delimiter": fmt.delimiter, "quotechar": QUOTE, "doublequote": True,
            "strict": False}


def table_header(values: list[str]) -> list[str]:
    """A table's column names (a CSV's first row, a Parquet schema's names): each named,
    distinct, at most MAX_TABLE_COLUMNS."""
    if len(values) > MAX_TABLE_COLUMNS:
        raise FormatError(BAD_HEADER, f": more than {MAX_TABLE_COLUMNS} columns")
    names = [v.strip() for v in values]
    seen: set[str] = set()
    for number, name in enumerate(names, start=1):
        if not name:
            raise FormatError(BAD_HEADER, f": column {number} has no name (the first row is "
                                          "the header, with a name for each column)")
        if len(name) > MAX_COLUMN_NAME_CHARS:
            raise FormatError(BAD_HEADER, f": column {number}'s name is longer than "
                                          f"{MAX_COLUMN_NAME_CHARS} characters")
        if name in seen:
            raise FormatError(BAD_HEADER, f": two columns are named {name!r}")
        seen.add(name)
    return names


def table_row(header: list[str], values: list[str]) -> dict[str, str]:
    """A delimited row as a dict by column name: one value for each column."""
    if len(values) != len(header):
        raise FormatError(RAGGED_ROW, f" has {len(values)} values where the header has "
                                      f"{len(header)} columns")
    return dict(zip(header, values, strict=True))


def ends_in_quotes(line: str, delimiter: str, in_quotes: bool = False) -> bool:
    """Whether a physical line of delimited text ends inside a quoted field (its record
    goes on on the next line), as the csv module reads it (csv_dialect): a quote opens a
    quoted field only at the field's start, "" inside one is a quote, and a quote anywhere
    else is a character. in_quotes: the line starts inside a quoted field."""
    i, n, at_start = 0, len(line), not in_quotes
    while i < n:
        if in_quotes:
            j = line.find(QUOTE, i)
            if j < 0:
                return True
            if j + 1 < n and line[j + 1] == QUOTE:
                i = j + 2
                continue
            in_quotes, at_start, i = False, False, j + 1
        elif at_start and line[i] == QUOTE:
            in_quotes, i = True, i + 1
        else:
            j = line.find(delimiter, i)
            if j < 0:
                return False
            at_start, i = True, j + 1
    return in_quotes


def delimited_rows(lines: Iterable[str], fmt: FileFormat) -> Iterator[tuple[int, list[str]]]:
    """(line number where it ends, values) of each non-blank record of delimited text,
    header first; `lines` as a file opened with newline="" gives them."""
    if not fmt.quoted:
        yield from _linear_rows(lines, fmt.delimiter or "\t")
        return
    reader = csv.reader(lines, **csv_dialect(fmt))
    try:
        for values in reader:
            if values:
                yield reader.line_num, values
    except csv.Error as exc:
        raise FormatError(BAD_HEADER if reader.line_num <= 1 else RAGGED_ROW,
                          f": {exc}") from None


def _linear_rows(lines: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Linear delimited text: each non-empty line a record, its values split at the
    delimiter. A line ends at "\n" (its "\r" before it dropped) and only there, as the
    upload reads it: a file opened with newline="" also ends one at a lone "\r"."""
    number, pending = 0, ""
    for piece in lines:
        if not piece.endswith("\n"):
            pending += piece
            continue
        number += 1
        line = (pending + piece).removesuffix("\n").removesuffix("\r")
        pending = ""
        if line:
            yield number, line.split(delimiter)
    if pending:
        yield number + 1, pending.removesuffix("\r").split(delimiter)


def role_columns(names: Iterable[str], given: Mapping[str, str] | None) -> dict[str, str]:
    """Role -> column for a table with these columns: the column `given` names for a role,
    else the first named as ROLE_NAMES says (each column plays one role at most)."""
    names = list(names)
    given = dict(given or {})
    roles: dict[str, str] = {}
    for role, column in given.items():
        if column not in names:
            raise NoColumn(role, f"there is no column {column!r}; the columns are "
                                 f"{', '.join(repr(n) for n in names)}")
        roles[role] = column
    by_name = {name.strip().lower(): name for name in reversed(names)}
    for role in ROLES:
        if role in roles:
            continue
        for alias in ROLE_NAMES.get(role, ()):
            named = by_name.get(alias)
            if named is not None and named not in roles.values():
                roles[role] = named
                break
    return roles


def table_kind(roles: Mapping[str, str]) -> DatasetKind:
    """What a table holds, by the roles its columns play (TEXT if it has no other's)."""
    for kind, needed in KIND_ROLES.items():
        if all(role in roles for role in needed):
            return kind  # type: ignore[return-value]
    return TEXT


def table_record(row: Mapping[str, Any], roles: Mapping[str, str]) -> dict[str, Any]:
    """The record a table's row holds: each role's field from its column. An empty cell
    (null, or "" in delimited text) is a field left out, but for the text, where "" is a
    blank text (skipped, as a blank JSON line's)."""
    record: dict[str, Any] = {}
    for role, column in roles.items():
        value = row.get(column)
        if value is None or (value == "" and role != "text"):
            continue
        record[role] = value
    return record


def read_row(kind: str, row: Mapping[str, Any], roles: Mapping[str, str]) -> Record | None:
    """A table's row read as a record of `kind` (RECORD_READERS), its errors naming the
    columns read."""
    try:
        return RECORD_READERS[kind](table_record(row, roles))
    except FormatError as exc:
        wanted = {*KIND_ROLES.get(kind, ()), *OPTIONAL_ROLES.get(kind, ()), "split"}
        read = ", ".join(f"{role}={column!r}" for role, column in roles.items()
                         if role in wanted)
        raise FormatError(exc.rule, f"{exc.problem} (columns read: {read})",
                          f"{exc.upload_problem} (columns read: {read})") from None


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
