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
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

# -- What a dataset holds (DatasetRow.kind, the API's "kind")

TEXT: Final = "text"  # documents: a .txt's lines, or JSON lines with "text"
LABELLED_TEXT: Final = "labelled_text"  # JSON lines with "text" and "label"
TAGGED_TOKENS: Final = "tagged_tokens"  # CoNLL columns, or JSON lines with "tokens" and "tags"
# SQuAD / CMRC records: JSON lines with "context", "question" and "answers"
EXTRACTIVE_QA: Final = "extractive_qa"
DatasetKind = Literal["text", "labelled_text", "tagged_tokens", "extractive_qa"]
DATASET_KINDS: tuple[DatasetKind, ...] = (TEXT, LABELLED_TEXT, TAGGED_TOKENS, EXTRACTIVE_QA)
# How a user makes a dataset of each kind, as messages tell them.
KIND_HOLDS = {TEXT: '.txt or JSON lines with "text"',
              LABELLED_TEXT: 'JSON lines with "text" and "label"',
              TAGGED_TOKENS: 'CoNLL columns or JSON lines with "tokens" and "tags"',
              EXTRACTIVE_QA: 'JSON lines with "context", "question" and "answers" (SQuAD)'}

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
    *_plain_and_gzip("jsonl", "json", (TEXT, LABELLED_TEXT, TAGGED_TOKENS, EXTRACTIVE_QA)),
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
BAD_QUESTION = "bad_question"
BAD_ANSWER = "bad_answer"


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
    """A text and its label, to learn to classify texts."""

    text: str
    label: str  # an integer label as its digits
    split: str | None

    @property
    def labels(self) -> list[str]:
        return [self.label]


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
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FormatError(NO_LABEL, ' needs a "label" (a string or an integer)',
                          ': every record needs a "label" (a string or an integer)')
    return LabelledText(text, label(str(value)), record_split(record))


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


Record = Document | LabelledText | TaggedTokens | AnsweredQuestion
# How a JSON record of each kind is read (None: a blank one, skipped).
RECORD_READERS: dict[str, Callable[[dict[str, Any]], Record | None]] = {
    TEXT: document, LABELLED_TEXT: labelled_text, TAGGED_TOKENS: tagged_tokens,
    EXTRACTIVE_QA: answered_question}


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
