"""Checks an uploaded dataset as its bytes stream past: size, sha256, gzip, UTF-8, and what
it holds: plain documents, labelled texts (JSON lines with "label"), tagged tokens (JSON
lines with "tokens" and "tags", or CoNLL columns) or questions (JSON lines, or SQuAD's JSON
document: a .json whose first line is not a whole record).

Nothing is held whole in memory: bytes are hashed and decoded incrementally, and only the
current line is buffered (up to a limit), plus, for a .txt upload, its first lines (at most
SNIFF_LINES lines or SNIFF_CHARS characters) until they tell plain text from CoNLL columns:
people keep CoNLL corpora in files named train.txt, and taking them for text would pretrain on
"EU NNP B-NP B-ORG" lines. A .json is JSON lines if its first non-blank line is a whole
record; else one JSON document in SQuAD's nesting, whose text is kept (up to
formats.MAX_DOCUMENT_BYTES) and read at the end, a paragraph at a time (formats.squad_records).

Tables: a CSV is read a record at a time (a quoted field may hold newlines: its physical
lines are kept until the record ends, up to the line limit); a TSV a line at a time, two ways
while both are possible, linear and with quoted fields, until its quotes decide which it is
(formats.py's TSV_QUOTING: the one kept becomes its format); a Parquet file is
spooled to a scratch folder as it arrives and read after the last byte, a batch of rows at
a time (its footer says how large it is uncompressed, checked before any row is read).
Either way the dataset records its columns (names and types) and a profile: per column,
a histogram of text lengths and, for a column that could hold labels, the count of each.

What each format, record and line may hold is jobspec/formats.py's (the engine reads the
same rules); this module streams the bytes past them and words their errors for the API.
"""

import codecs
import contextlib
import copy
import csv
import hashlib
import math
import zlib
from collections import Counter
from typing import IO, Any

from jobspec import formats
from jobspec.formats import MAX_LABEL_CHARS, MAX_LABELS, FormatError
from service.domain.refusals import DomainError, Invalid, TooLarge, Unsupported
from service.scratch import scratch_dir

MAX_COLUMNS = 64  # CoNLL-U has 10, CoNLL-2012 about 20
SAMPLE_VALUES, SAMPLE_CHARS = 5, 40  # the first distinct values shown per column
SNIFF_LINES, SNIFF_CHARS = 1000, 64 * 1024  # what a .txt upload is judged by
# Small gzip files (a few lines) legitimately compress far better than corpora do; the
# ratio limit applies past this many decompressed bytes.
RATIO_FLOOR = 8 * 1024 * 1024
GUNZIP_STEP = 1024 * 1024  # decompressed bytes per step: each is checked before the next
# The error code of each format rule an upload breaks; the rest are invalid_dataset.
RULE_CODES = {formats.INVALID_JSON: "invalid_jsonl", formats.NO_TEXT: "invalid_jsonl"}
# Text lengths (characters; items for a list column) are counted in bins from each edge to
# the next, the last open: fixed, so the histogram needs no second pass.
LENGTH_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
PARQUET_BATCH_ROWS = 256  # rows decoded at once: what a Parquet upload holds in memory


class CorpusRejected(DomainError):
    """The upload is not an acceptable corpus; `param` is the request part at fault."""

    def __init__(self, code: str, message: str, param: str = "file") -> None:
        super().__init__(code, message, param)


class CorpusInvalid(CorpusRejected, Invalid):
    """Content the declared format does not allow."""


class CorpusTooLarge(CorpusRejected, TooLarge):
    """Past a size limit (the file, its uncompressed size, a line)."""


class CorpusUnsupported(CorpusRejected, Unsupported):
    """A file type the service does not read."""


def format_of(filename: str) -> str:
    """The format the file name declares; a .txt may still turn out to hold CoNLL columns."""
    fmt = formats.suffix_format(filename)
    if fmt is None:
        raise CorpusUnsupported(
            "unsupported_format", f"unsupported file type {filename!r}: upload "
            f"{formats.UPLOAD_SUFFIXES} (or {formats.GZIP_SUFFIXES})")
    return fmt.name


def sniff_columns(lines: list[str], *, told: bool) -> str | None:
    """None if these first lines of a file are CoNLL columns, else why they are not.

    Every token line must have the same number (>= 2) of columns with no spaces inside
    them; prose fails that at once (its lines vary in length). Lines of two words could
    still pass, so unless the uploader said the file has columns (`told`), it also needs a
    mark of CoNLL: a -DOCSTART- line, a BIO tag column, or sentences separated by blank
    lines that are tab-separated or have a column of few distinct values (tags repeat,
    words mostly do not)."""
    width = 0
    rows = sentences = 0
    tabbed, docstart, in_sentence = True, False, False
    values: list[set[str]] = []
    for line_no, line in enumerate(lines, start=1):
        try:
            columns = formats.conll_line(line, in_sentence=in_sentence)
        except FormatError:
            return f"line {line_no} has a single column"
        if columns == formats.BLANK:
            in_sentence = False
            continue
        if columns == formats.DOCUMENT_START:
            docstart = True
            continue
        if isinstance(columns, str):  # a comment
            continue
        stripped = line.strip()
        if len(columns) != len(stripped.split()):
            return f"line {line_no} has spaces inside its tab-separated columns"
        if width and len(columns) != width:
            return f"line {line_no} has {len(columns)} columns where the lines before have {width}"
        if len(columns) > MAX_COLUMNS:
            return f"line {line_no} has more than {MAX_COLUMNS} columns"
        width = len(columns)
        values = values or [set() for _ in columns[1:]]
        for seen, value in zip(values, columns[1:], strict=True):
            seen.add(value)
        tabbed = tabbed and "\t" in stripped
        rows += 1
        sentences += not in_sentence
        in_sentence = True
    if not rows:
        return "no line has columns"
    if told or docstart or any(formats.is_entity_tagging(v) for v in values):
        return None
    repetitive = any(len(v) <= rows // 2 for v in values)
    if sentences >= 2 and (tabbed or repetitive):
        return None
    return ("nothing marks the lines as CoNLL columns (a -DOCSTART- line, a BIO tag column, "
            "or tab-separated sentences between blank lines)")


class _Column:
    """What one CoNLL column holds: its first distinct values (shown on the dataset so a
    wrong tag column is seen at once) and, while it could still be the tag column, all of
    its distinct values; a column of words soon has too many and stops collecting."""

    def __init__(self) -> None:
        self.samples: list[str] = []
        self.values: set[str] | None = set()
        self.unfit: str | None = None  # why it cannot be the tag column

    def see(self, value: str, line_no: int) -> None:
        if self.values is not None and value in self.values:
            return  # the common case, kept short: every line of an upload comes here
        if len(self.samples) < SAMPLE_VALUES:
            shown = value if len(value) <= SAMPLE_CHARS else value[:SAMPLE_CHARS - 1] + "…"
            if shown not in self.samples:
                self.samples.append(shown)
        if self.values is None:
            return
        if not value:
            self._not_tags(f"line {line_no} has an empty value in it")
        elif len(value) > MAX_LABEL_CHARS:
            self._not_tags(f"line {line_no} has a value longer than {MAX_LABEL_CHARS} "
                           "characters in it")
        else:
            self.values.add(value)
            if len(self.values) > MAX_LABELS:
                self._not_tags(f"it has more than {MAX_LABELS} distinct values by line {line_no}")

    def _not_tags(self, why: str) -> None:
        self.values, self.unfit = None, why


class Lengths:
    """A histogram of lengths over LENGTH_EDGES, with their count, least, most and mean."""

    def __init__(self) -> None:
        self.counts = [0] * len(LENGTH_EDGES)
        self.n = self.total = 0
        self.least: int | None = None
        self.most = 0

    def add(self, length: int) -> None:
        self.counts[_bin(length)] += 1
        self.n += 1
        self.total += length
        self.most = max(self.most, length)
        self.least = length if self.least is None else min(self.least, length)

    def summary(self) -> dict[str, Any] | None:
        if not self.n:
            return None
        return {"edges": list(LENGTH_EDGES), "counts": self.counts, "count": self.n,
                "min": self.least, "max": self.most, "mean": round(self.total / self.n, 1)}


def _bin(length: int) -> int:
    for index in range(len(LENGTH_EDGES) - 1, -1, -1):
        if length >= LENGTH_EDGES[index]:
            return index
    return 0


class Values:
    """How often each value of a column occurs, while the column could hold labels: at most
    MAX_LABELS distinct values, each non-blank and at most MAX_LABEL_CHARS long."""

    def __init__(self) -> None:
        self.counts: Counter[str] | None = Counter()
        self.unfit: str | None = None  # why the column cannot hold labels

    def see(self, value: str, where: str) -> None:
        if self.counts is None:
            return
        if value in self.counts:
            self.counts[value] += 1
        elif not value.strip():
            self._unfit(f"{where} is blank")
        elif len(value) > MAX_LABEL_CHARS:
            self._unfit(f"{where} is longer than {MAX_LABEL_CHARS} characters")
        elif len(self.counts) >= MAX_LABELS:
            self._unfit(f"it has more than {MAX_LABELS} distinct values by {where}")
        else:
            self.counts[value] = 1

    def _unfit(self, why: str) -> None:
        self.counts, self.unfit = None, why


class TableColumn:
    """What one column of a table holds: its type, empty cells, lengths and values."""

    def __init__(self, name: str, declared: str | None = None) -> None:
        self.name = name
        self.declared = declared  # a Parquet column's type, from its schema
        self.integers = self.numbers = self.strings = self.empty = 0
        self.lengths = Lengths()
        self.values = Values()

    @property
    def type(self) -> str:
        if self.declared is not None:
            return self.declared
        if self.strings or not (self.integers or self.numbers):
            return "string"
        return "number" if self.numbers else "integer"

    def see_text(self, value: str, row: int) -> None:
        """A cell of delimited text: a string, typed by what it reads as."""
        if value == "":
            self.empty += 1
            return
        if not self.strings:  # until a cell is text, try numbers
            kind = _number_kind(value)
            if kind == "integer":
                self.integers += 1
            elif kind == "number":
                self.numbers += 1
            else:
                self.strings += 1
        self.lengths.add(len(value))
        self.values.see(value, f"row {row}")

    def see(self, value: Any, row: int, max_cell: int) -> None:
        """A cell of a Parquet column, as pyarrow gives it (None for null)."""
        if value is None:
            self.empty += 1
            return
        if isinstance(value, list):
            if sum(len(v) if isinstance(v, str) else 1 for v in value) > max_cell:
                raise _cell_too_long(self.name, row, max_cell)
            self.lengths.add(len(value))
            for item in value:
                if item is not None:
                    self.values.see(str(item), f"row {row}")
            return
        text = value if isinstance(value, str) else str(value)
        if len(text) > max_cell:
            raise _cell_too_long(self.name, row, max_cell)
        if isinstance(value, str):
            self.lengths.add(len(value))
        if isinstance(value, bool | int | str):
            self.values.see(text, f"row {row}")
        elif self.values.counts is not None:
            self.values._unfit("it holds numbers with fractions or other values")

    def profile(self) -> dict[str, Any]:
        return {"type": self.type, "empty": self.empty, "lengths": self.lengths.summary(),
                "values": dict(self.values.counts) if self.values.counts is not None
                else None, "not_labels": self.values.unfit}


def _cell_too_long(column: str, row: int, limit: int) -> "CorpusTooLarge":
    return CorpusTooLarge("line_too_long", f"row {row}: the cell of column {column!r} is "
                          f"longer than {limit} characters")


def _number_kind(value: str) -> str | None:
    try:
        int(value)
        return "integer"
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return "number" if math.isfinite(number) else None


def parquet_type(arrow_type: Any) -> str:
    """The column type a Parquet (arrow) type is shown as (formats.COLUMN_TYPES)."""
    import pyarrow as pa  # only for Parquet uploads and previews

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or \
            pa.types.is_dictionary(arrow_type) and pa.types.is_string(arrow_type.value_type):
        return "string"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "number"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "list"
    return "other"


class TableReading:
    """A table read one way: its header, each column's profile, its rows and the split each
    names (a TSV is read two ways until its quotes decide: CorpusInspector._check_tsv)."""

    def __init__(self) -> None:
        self.header: list[str] | None = None
        self.columns: list[TableColumn] = []
        self.split_column: int | None = None
        self.rows = 0
        self.splits: dict[str, int] = {}

    def start(self, header: list[str], line: int, types: list[str] | None = None) -> None:
        try:
            self.header = formats.table_header(header)
        except FormatError as exc:
            raise CorpusInvalid("invalid_dataset", exc.at(line, upload=True)) from None
        self.columns = [TableColumn(name, None if types is None else types[i])
                        for i, name in enumerate(self.header)]
        split = formats.role_columns(self.header, None).get("split")
        self.split_column = None if split is None else self.header.index(split)

    def text_row(self, values: list[str], line: int) -> None:
        """A record of delimited text (ending on line `line`): the header, then the rows."""
        if self.header is None:
            self.start(values, line)
            return
        self.rows += 1
        try:
            formats.table_row(self.header, values)
        except FormatError as exc:
            raise CorpusInvalid("invalid_dataset",
                                f"{exc.at(self.rows, unit='row', upload=True)} "
                                f"(line {line})") from None
        for column, value in zip(self.columns, values, strict=True):
            column.see_text(value, self.rows)
        self.split(values)

    def split(self, values: list[Any]) -> None:
        """The split a row names (its "split" column's), counted."""
        split = None if self.split_column is None else values[self.split_column]
        try:
            named = formats.record_split({"split": split}) if split not in (None, "") else None
        except FormatError as exc:
            raise CorpusInvalid("invalid_dataset", exc.at(self.rows, unit="row", upload=True)
                                ) from None
        named = named or "train"
        self.splits[named] = self.splits.get(named, 0) + 1


# How a TSV was read, as a message that cannot read it words it (formats.py's TSV_QUOTING).
TSV_READINGS = {"linear": "a line a record, quotes as text",
                "quoted": "with RFC 4180 quoted fields"}


class CorpusInspector:
    def __init__(self, fmt: str, *, max_bytes: int, max_uncompressed: int,
                 max_line_bytes: int, tag_column: int | None = None,
                 max_ratio: float | None = None) -> None:
        self.declared = fmt  # what the file name says
        self.fmt = fmt  # what the content is: a .txt of columns becomes conll
        self.max_bytes, self.max_uncompressed = max_bytes, max_uncompressed
        self.max_line_bytes = max_line_bytes
        self.max_ratio = max_ratio  # decompressed bytes per gzip byte received
        self.bytes = 0
        self.uncompressed = 0
        self.documents = 0
        self.line_no = 1
        self._sha = hashlib.sha256()
        file_format = self._format = formats.FORMATS[fmt]
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if file_format.gzip else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        # How lines are read: "sniff" (a .txt's first lines, kept until they decide between
        # "text" and "columns"), "text" (only counted), "json", "columns" or "table" (each
        # checked); "parquet": bytes spooled to a scratch file, read at the end; "sniff_json"
        # (a .json's first line, kept until it decides between "json" and "document"),
        # "document": one JSON document, its text kept and read whole at the end.
        self._mode = "sniff" if file_format.columns_as else \
            "sniff_json" if file_format.lines_as else \
            {"lines": "text", "json": "json", "columns": "columns", "delimited": "table",
             "parquet": "parquet", "squad": "document"}[file_format.layout]
        self._document: list[str] = []  # "document": the text so far
        # Tables: the readings still possible, by name: one ("table"), or a TSV's two,
        # "linear" and "quoted" (TSV_READINGS), one object under both names until a line
        # holding a quote tells them apart; why a reading was ruled out; the record being
        # read (a CSV's physical lines, while a quoted field holds newlines).
        self._readings = dict.fromkeys(
            ("linear", "quoted") if file_format.quotes_as else ("table",), TableReading())
        self._ruled_out: dict[str, CorpusRejected] = {}
        self._record: list[str] = []
        self._record_len = self._record_line = 0
        self._in_quotes = False
        # JSON lines and text: lengths of the texts, counts of the labels.
        self._lengths = Lengths()
        self._label_counts: Counter[str] = Counter()
        self._scratch = contextlib.ExitStack()
        self._spool: IO[bytes] | None = None
        if self._mode == "parquet":
            folder = self._scratch.enter_context(scratch_dir("upload-"))
            self._spool_path = folder / "upload.parquet"
            self._spool = self._scratch.enter_context(open(self._spool_path, "wb"))
        self._line: list[str] = []  # the current, unfinished line (all but text)
        self._line_len = 0
        self._line_has_text = False  # text: does the current line hold any non-space?
        self._sample: list[str] = []  # sniff: the lines so far
        self._sample_chars = self._sample_rows = 0
        self._not_columns: str | None = None  # why a .txt was read as text
        # What the data holds (formats.DATASET_KINDS); labels seen.
        self.kind: str | None = formats.TAGGED_TOKENS if self._mode == "columns" else None
        self.labels: set[str] = set()
        self.splits: dict[str, int] = {}
        # CoNLL: columns per line, what each holds, the tag column (0-based; 0 = tokens).
        self.columns: int | None = None
        self._columns: list[_Column] = []
        self.requested_tag_column = tag_column
        self.tag_column: int | None = None
        self._in_sentence = False  # conll: inside a sentence
        self._check_request()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def fields(self) -> list[dict[str, str]] | None:
        """A table's columns: name and type (formats.COLUMN_TYPES), in file order."""
        columns = self._reading.columns
        return [{"name": c.name, "type": c.type} for c in columns] if columns else None

    @property
    def profile(self) -> dict[str, Any] | None:
        """What the data holds, for its preview: per column (a table's, or a record's fields)
        its type, empty cells, a histogram of text lengths and the count of each value of a
        column that could hold labels."""
        table = self._reading
        if table.columns:
            return {"rows": table.rows, "columns": {c.name: c.profile() for c in table.columns}}
        if not self._lengths.n:
            return None
        fields = {"text": {"type": "string", "empty": 0, "lengths": self._lengths.summary(),
                           "values": None, "not_labels": None}}
        if self.kind == formats.TAGGED_TOKENS:
            fields = {"tokens": {**fields["text"], "type": "list"}}
        if self._label_counts:
            name = "tags" if self.kind == formats.TAGGED_TOKENS else "label"
            fields[name] = {"type": "list" if name == "tags" else "string", "empty": 0,
                            "lengths": None, "values": dict(self._label_counts),
                            "not_labels": None}
        return {"rows": self.documents, "columns": fields}

    @property
    def _reading(self) -> TableReading:
        """How the table is read: a TSV with quotes, if that is still possible and a quote
        was seen (the readings differ), else the first reading still possible."""
        quoted = self._readings.get("quoted")
        if quoted is not None and quoted is not self._readings.get("linear"):
            return quoted
        return next(iter(self._readings.values()))

    def close(self) -> None:
        """Remove what the inspection keeps on disk (a Parquet upload's spooled copy)."""
        self._scratch.close()

    @property
    def column_samples(self) -> list[list[str]] | None:
        return [c.samples for c in self._columns] if self._columns else None

    def request_tag_column(self, tag_column: int | None) -> None:
        """The uploader names the tag column (it may come after the file in the form)."""
        self.requested_tag_column = tag_column
        self._check_request()

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            raise CorpusTooLarge("payload_too_large",
                                 f"upload exceeds the limit of {self.max_bytes} bytes")
        self._sha.update(chunk)
        if self._spool is not None:
            self._spool.write(chunk)  # read whole at the end: a Parquet footer comes last
            return
        if self._gunzip is not None:
            try:
                # Bounded output per step keeps a gzip bomb from inflating in memory, and
                # the ratio is checked before each step's text is scanned.
                data = self._gunzip.decompress(chunk, GUNZIP_STEP)
                while self._gunzip.unconsumed_tail:
                    self._decoded(data)
                    data = self._gunzip.decompress(self._gunzip.unconsumed_tail, GUNZIP_STEP)
            except zlib.error as exc:
                raise CorpusInvalid("invalid_gzip", f"not a valid gzip file: {exc}") from None
            self._decoded(data)
        else:
            self._decoded(chunk)

    def _decoded(self, data: bytes) -> None:
        self.uncompressed += len(data)
        if self.uncompressed > self.max_uncompressed:
            raise CorpusTooLarge("payload_too_large",
                                 f"corpus exceeds {self.max_uncompressed} bytes uncompressed")
        if self._gunzip is not None and self.max_ratio is not None and \
                self.uncompressed > RATIO_FLOOR and \
                self.uncompressed > self.max_ratio * self.bytes:
            raise CorpusTooLarge("payload_too_large",
                                 f"the gzip file decompresses to more than {self.max_ratio:g} "
                                 "times its size (a compression bomb?)")
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            line = self.line_no + data.count(b"\n", 0, max(exc.start, 0))
            raise CorpusInvalid(
                "invalid_encoding",
                f"line {line} is not valid UTF-8 ({exc.reason}); save the file as UTF-8",
            ) from None
        self._text(text)

    def _text(self, text: str) -> None:
        if self.line_no == 1 and not self._line and not self._line_has_text:
            # A byte order mark (Windows editors write one) is not part of the first line.
            text = text.removeprefix("\ufeff")
        if self._mode == "sniff_json":
            self._sniff_json(text)
            return
        if self._mode == "document":
            self._keep(text)
            return
        lines = text.split("\n")
        if len(lines) > 1:  # the first ends a line begun in an earlier chunk
            self._piece(lines[0])
            self._end_line()
        for line in lines[1:-1]:  # whole lines: checked at once, not piece by piece
            self._whole_line(line)
        if len(lines) > 1 or lines[0]:
            self._piece(lines[-1])

    def _sniff_json(self, text: str) -> None:
        """A .json's text until its first non-blank line ends (kept in self._line): then
        JSON lines if that line is a record, else one JSON document."""
        start = 0
        if not self._line_has_text:
            start = len(text) - len(text.lstrip())
            self._line_has_text = start < len(text)
        end = text.find("\n", start) if self._line_has_text else -1
        if end < 0:
            self._line.append(text)
            self._line_len += len(text)
            if self._line_len > self.max_line_bytes:  # longer than a JSON line may be
                self._decide_json(lines=False)
            return
        self._line.append(text[:end])
        self._decide_json(formats.holds_json_lines("".join(self._line)), text[end:])

    def _decide_json(self, lines: bool, rest: str = "") -> None:
        """Read a .json as JSON lines (format lines_as) or as one document from here on,
        starting with the text kept so far and `rest`."""
        head, self._line, self._line_len, self._line_has_text = self._line, [], 0, False
        if lines:
            self._mode = "json"
            self.fmt = self._format.lines_as or self.fmt
        else:
            self._mode = "document"
        self._check_request()
        for text in (*head, rest):
            self._text(text)

    def _keep(self, text: str) -> None:
        """Text of a JSON document, kept to be read whole: up to formats.MAX_DOCUMENT_BYTES."""
        if self.uncompressed > formats.MAX_DOCUMENT_BYTES:
            raise CorpusTooLarge(
                "document_too_large",
                f"a .json document is read whole, and this one is larger than "
                f"{formats.MAX_DOCUMENT_BYTES // 1024**2} MB: split it into several files, or "
                'into JSON lines (.jsonl: one question a line, {"context", "question", '
                '"answers"}), which are read a line at a time')
        self._document.append(text)
        self.line_no += text.count("\n")

    def _finish_document(self) -> None:
        """A .json read as one document: its questions, read as the engine reads them
        (formats.squad_questions)."""
        if self.bytes == 0:
            raise CorpusInvalid("empty_file", "the uploaded file is empty")
        text, self._document = "".join(self._document), []
        self.kind = formats.EXTRACTIVE_QA
        try:
            for question in formats.squad_questions(text):
                split = question.split or "train"
                self.splits[split] = self.splits.get(split, 0) + 1
                self.documents += 1
        except FormatError as exc:
            raise CorpusInvalid("invalid_json" if exc.rule == formats.INVALID_JSON
                                else "invalid_dataset", exc.upload_problem) from None
        if self.documents == 0:
            raise CorpusInvalid("no_documents", "the document holds no questions (every "
                                'data[].paragraphs[].qas is empty)')

    def _whole_line(self, line: str) -> None:
        if self._mode == "text":
            if line.strip():
                self.documents += 1
                self._lengths.add(len(line))
            self.line_no += 1
        elif self._mode == "sniff" or len(line) > self.max_line_bytes:
            self._piece(line)
            self._end_line()
        else:
            self._check_line(line)
            self.line_no += 1

    def _piece(self, piece: str) -> None:
        if not piece:
            return
        if self._mode == "sniff" and \
                self._sample_chars + self._line_len + len(piece) > SNIFF_CHARS:
            self._decide()  # the sample is full: judge by the lines it holds
        if self._mode == "text":
            self._line_has_text = self._line_has_text or bool(piece.strip())
            self._line_len += len(piece)
            return
        self._line_len += len(piece)
        if self._mode != "sniff" and self._line_len > self.max_line_bytes:
            raise CorpusTooLarge("line_too_long",
                                 f"line {self.line_no} is longer than "
                                 f"{self.max_line_bytes} characters")
        self._line.append(piece)

    def _end_line(self) -> None:
        if self._mode == "text":
            self.documents += self._line_has_text
            if self._line_has_text:
                self._lengths.add(self._line_len)
            self._line_has_text, self._line_len = False, 0
        else:
            line = "".join(self._line)
            self._line, self._line_len = [], 0
            if self._mode == "sniff":
                self._sample.append(line)
                self._sample_chars += len(line) + 1
                self._sample_rows += bool(line.strip())
                if self._sample_rows >= SNIFF_LINES:
                    self._decide()
            else:
                self._check_line(line)
        self.line_no += 1

    def _check_line(self, line: str) -> None:
        if self._mode == "text":
            if line.strip():
                self.documents += 1
                self._lengths.add(len(line))
        elif self._mode == "columns":
            self._check_conll(line)
        elif self._mode == "table":
            self._check_table(line)
        elif line.strip():
            self._check_json(line.strip())

    def _decide(self) -> None:
        """A .txt's first lines are in: read it as text or as CoNLL columns from here on,
        and check the lines kept so far as such."""
        why = sniff_columns(self._sample, told=self.requested_tag_column is not None)
        self._mode = "text" if why else "columns"
        self._not_columns = why
        if self._mode == "columns":
            self.fmt = formats.FORMATS[self.declared].columns_as or self.fmt
            self.kind = formats.TAGGED_TOKENS
        self._check_request()
        sample, self._sample = self._sample, []
        current = self.line_no
        for line_no, line in enumerate(sample, start=1):  # the sample starts at line 1
            self.line_no = line_no
            self._check_line(line)
        self.line_no = current
        if self._mode == "text":  # the unfinished line: only whether it has text matters
            self._line_has_text = any(piece.strip() for piece in self._line)
            self._line_len = sum(len(piece) for piece in self._line)
            self._line = []

    def _check_request(self) -> None:
        """Refuse a tag column this upload cannot have, as soon as that is known."""
        wanted = self.requested_tag_column
        if wanted is None or self._mode == "sniff":
            return
        if self._mode in ("json", "sniff_json", "document"):
            raise CorpusInvalid("invalid_tag_column",
                                'tag_column is for CoNLL column files; JSON lines name their '
                                'tags in "tags"', "tag_column")
        if self._mode in ("table", "parquet"):
            raise CorpusInvalid("invalid_tag_column",
                                'tag_column is for CoNLL column files; a table\'s columns are '
                                'named at fine-tuning ("columns": {"tags": "..."})', "tag_column")
        if self._mode == "text":
            raise CorpusInvalid(
                "invalid_tag_column",
                f"tag_column is for CoNLL column files, and this file was read as plain text: "
                f"{self._not_columns}", "tag_column")
        if self.columns is not None:
            self._resolve(wanted, self.columns)

    @staticmethod
    def _resolve(wanted: int, columns: int) -> int:
        index = wanted + columns if wanted < 0 else wanted
        if not 1 <= index < columns:
            raise CorpusInvalid(
                "invalid_tag_column",
                f"tag_column {wanted} is out of range: the file has {columns} columns, "
                f"counted from 0 (the tokens) to {columns - 1}; give 1 to {columns - 1}, "
                "or -1 for the last", "tag_column")
        return index

    def _bad(self, message: str) -> CorpusRejected:
        return CorpusInvalid("invalid_dataset", f"line {self.line_no}: {message}")

    def _broken(self, exc: FormatError) -> CorpusRejected:
        """A format rule the current line breaks, as the API words it."""
        return CorpusInvalid(RULE_CODES.get(exc.rule, "invalid_dataset"),
                             exc.at(self.line_no, upload=True))

    def _label(self, value: str) -> None:
        self.labels.add(value)
        if len(self.labels) > MAX_LABELS:
            raise self._bad(f"more than {MAX_LABELS} distinct labels")

    def _check_json(self, line: str) -> None:
        try:
            record = formats.json_record(line)
            kind = formats.record_kind(record)
            if self.kind is None:
                self.kind = kind
            elif kind != self.kind and (self.kind, kind) != (formats.LABELLED_TEXT,
                                                             formats.TEXT):
                raise self._bad(f"a {kind.replace('_', ' ')} record among {self.kind} records")
            # Read as the dataset's kind: a text record among labelled ones needs a label
            # too, unless its text is blank.
            read = formats.RECORD_READERS[self.kind](record)
        except FormatError as exc:
            raise self._broken(exc) from None
        if read is None:
            return  # blank text: no document
        for value in read.labels:
            self._label(value)
            self._label_counts[value] += 1
        text = getattr(read, "text", None)
        if isinstance(text, str):
            self._lengths.add(len(text))
        elif isinstance(read, formats.TaggedTokens):
            self._lengths.add(len(read.tokens))
        split = read.split or "train"
        self.splits[split] = self.splits.get(split, 0) + 1
        self.documents += 1

    def _check_table(self, line: str) -> None:
        """One physical line of a CSV: a record, or part of one whose quoted field holds a
        newline (kept until the record ends, up to the line limit). A TSV's: _check_tsv."""
        if self._format.quotes_as:
            self._check_tsv(line)
            return
        delimiter = self._format.delimiter
        assert delimiter is not None
        table = self._readings["table"]
        if not self._record:
            if formats.QUOTE not in line:  # most lines: no quoting to read
                line = line.removesuffix("\r")
                if line:
                    table.text_row(line.split(delimiter), self.line_no)
                return
            self._record_line = self.line_no
        self._record.append(line)
        self._record_len += len(line) + 1
        if self._record_len > self.max_line_bytes:
            raise CorpusTooLarge("line_too_long",
                                 f"the record from line {self._record_line} is longer than "
                                 f"{self.max_line_bytes} characters (a quote never closed?)")
        self._in_quotes = formats.ends_in_quotes(line, delimiter, self._in_quotes)
        if self._in_quotes:
            return
        lines, self._record, self._record_len = self._record, [], 0
        values = next(csv.reader([f"{physical}\n" for physical in lines],
                                 **formats.csv_dialect(self._format)), [])
        if values:
            table.text_row(values, self._record_line)

    def _check_tsv(self, line: str) -> None:
        """One line of a TSV, a record, read each way still possible (formats.py's
        TSV_QUOTING): linear (split at tabs) and with quoted fields, alike until a line holds
        a quote. A line that one reading cannot read rules it out; one neither can, or the
        last, is refused."""
        line = line.removesuffix("\r")
        if not line:
            return
        values = {"linear": line.split("\t")}
        values["quoted"] = values["linear"]
        if formats.QUOTE in line and "quoted" in self._readings:
            quoted = formats.quoted_tsv_values(line)
            if quoted is None:
                self._rule_out(["quoted"], CorpusInvalid(
                    "invalid_dataset", f"line {self.line_no} has a quote that does not quote "
                                       "a whole field on its line"))
            else:
                values["quoted"] = quoted
                if self._readings["quoted"] is self._readings.get("linear"):
                    self._readings["quoted"] = copy.deepcopy(self._readings["quoted"])
        read: list[TableReading] = []
        for name, reading in list(self._readings.items()):
            if any(reading is done for done in read):
                continue  # one reading under both names: read once
            read.append(reading)
            try:
                reading.text_row(values[name], self.line_no)
            except CorpusRejected as exc:
                self._rule_out([n for n, r in self._readings.items() if r is reading], exc)

    def _rule_out(self, names: list[str], why: CorpusRejected) -> None:
        """A TSV cannot be read these ways; refused if no way is left, saying why."""
        for name in names:
            del self._readings[name]
            self._ruled_out[name] = why
        if self._readings:
            return
        other = next((n for n, e in self._ruled_out.items() if e is not why), None)
        if other is None:  # no quote seen: both ways read alike
            raise why
        raise CorpusInvalid(why.code, f"{why.message} (the TSV read {TSV_READINGS[names[0]]}; "
                                      f"read {TSV_READINGS[other]}: "
                                      f"{self._ruled_out[other].message})")

    def _read_parquet(self) -> None:
        """The spooled Parquet file, checked from its footer (columns, size uncompressed,
        ratio) before a row is read, then read a batch of rows at a time."""
        import pyarrow as pa  # noqa: PLC0415 (only for Parquet uploads)
        import pyarrow.parquet as pq  # noqa: PLC0415

        assert self._spool is not None
        self._spool.close()
        try:
            parquet = pq.ParquetFile(self._spool_path)
            meta = parquet.metadata
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorpusInvalid("invalid_parquet", f"not a Parquet file ({exc}); upload a "
                                ".parquet file written by pyarrow, pandas, polars or Spark"
                                ) from None
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        self.uncompressed = sum(g.total_byte_size for g in groups)
        if self.uncompressed > self.max_uncompressed:
            raise CorpusTooLarge("payload_too_large",
                                 f"corpus exceeds {self.max_uncompressed} bytes uncompressed")
        if self.max_ratio is not None and self.uncompressed > RATIO_FLOOR and \
                self.uncompressed > self.max_ratio * self.bytes:
            raise CorpusTooLarge("payload_too_large",
                                 f"the Parquet file decompresses to more than "
                                 f"{self.max_ratio:g} times its size (a compression bomb?)")
        reading = self._readings["table"]
        reading.start(list(schema.names), 1, [parquet_type(f.type) for f in schema])
        # Rows decoded at once: fewer when rows are large, so a batch stays near 64 MB.
        widest = max((g.total_byte_size / max(g.num_rows, 1) for g in groups), default=1)
        batch = max(1, min(PARQUET_BATCH_ROWS, int(64 * 1024 * 1024 // max(widest, 1))))
        try:
            for table in parquet.iter_batches(batch_size=batch):
                columns = [array.to_pylist() for array in table.columns]
                for index in range(table.num_rows):
                    reading.rows += 1
                    row = [values[index] for values in columns]
                    for column, value in zip(reading.columns, row, strict=True):
                        column.see(value, reading.rows, self.max_line_bytes)
                    reading.split(row)
        except (pa.ArrowException, OSError) as exc:
            raise CorpusInvalid("invalid_parquet",
                                f"the Parquet file is damaged at row {reading.rows + 1} ({exc})"
                                ) from None

    def _table_kind(self) -> None:
        """What a table holds, by its columns' names (formats.ROLE_NAMES): a kind its format
        may hold, whose roles' columns fit (labels: MAX_LABELS distinct values at most)."""
        table = self._reading
        assert table.header is not None
        roles = formats.role_columns(table.header, None)
        by_name = {c.name: c for c in table.columns}
        self.kind = formats.TEXT
        for kind, needed in formats.KIND_ROLES.items():
            if kind in self._format.holds and all(role in roles for role in needed):
                self.kind = kind
                break
        for role in ("label", "tags", "labels"):
            column = by_name.get(roles.get(role, ""))
            if role in formats.KIND_ROLES.get(self.kind, ()) and column is not None:
                counts = column.values.counts
                self.labels = set(counts) if counts is not None else set()
                break

    def _check_conll(self, line: str) -> None:
        """One line of a column file, read as the engine reads it (formats.conll_line):
        blank lines end sentences, '#' before a sentence is a comment, -DOCSTART- lines are
        skipped."""
        try:
            columns = formats.conll_line(line, in_sentence=self._in_sentence)
        except FormatError as exc:
            raise self._broken(exc) from None
        if columns == formats.BLANK:
            self._in_sentence = False
            return
        if isinstance(columns, str):  # a comment, -DOCSTART-
            return
        if self.columns is None:
            if len(columns) > MAX_COLUMNS:
                raise self._bad(f"more than {MAX_COLUMNS} columns")
            self.columns = len(columns)
            self._columns = [_Column() for _ in columns]
            self._check_request()
        elif len(columns) != self.columns:
            # The tag column is a position: it must mean the same on every line.
            read_as = " (this .txt was read as CoNLL columns from its first lines)" \
                if self.fmt != self.declared else ""
            raise self._bad(f"{len(columns)} columns where the lines before have "
                            f"{self.columns}{read_as}")
        if not columns[0].strip():
            raise self._bad("the token column is empty")
        for column, value in zip(self._columns, columns, strict=True):
            column.see(value.strip(), self.line_no)
        if not self._in_sentence:
            self._in_sentence = True
            self.documents += 1

    def _choose_tag_column(self) -> None:
        """The column asked for; else the last if it holds BIO tags (CoNLL-2003 NER comes
        after POS and chunk columns), else the second (token<TAB>tag files)."""
        assert self.columns is not None
        wanted = self.requested_tag_column
        if wanted is not None:
            index = self._resolve(wanted, self.columns)
        else:
            last = self._columns[-1]
            index = self.columns - 1 if formats.is_entity_tagging(last.values) else 1
        column = self._columns[index]
        if column.values is None:
            hint = "" if wanted is not None else "; name the tag column with tag_column"
            raise CorpusInvalid(
                "invalid_dataset",
                f"column {index} (counted from 0) cannot be the tag column: {column.unfit}{hint}",
                "tag_column" if wanted is not None else "file")
        self.tag_column = index
        self.labels = set(column.values)

    def finish(self) -> None:
        """Call after the last chunk; raises if the corpus is truncated or empty."""
        if self._mode == "parquet":
            if self.bytes == 0:
                raise CorpusInvalid("empty_file", "the uploaded file is empty")
            self._read_parquet()
            self._finish_table()
            return
        if self._gunzip is not None and not self._gunzip.eof:
            raise CorpusInvalid("invalid_gzip", "the gzip stream is truncated")
        try:
            tail = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorpusInvalid("invalid_encoding",
                                f"line {self.line_no} ends in the middle of a UTF-8 character"
                                ) from None
        self._text(tail)
        if self._mode == "sniff_json":  # the first line never ended
            self._decide_json(formats.holds_json_lines("".join(self._line)))
        if self._mode == "document":
            self._finish_document()
            return
        self._end_line()
        if self._mode == "sniff":
            self._decide()
        if self._mode == "table":
            if self._record:
                raise CorpusInvalid("invalid_dataset", f"the record from line "
                                    f"{self._record_line} ends inside a quoted field (a quote "
                                    "never closed)")
            if self.bytes == 0:
                raise CorpusInvalid("empty_file", "the uploaded file is empty")
            self._finish_table()
            return
        self.line_no -= 1
        self.kind = self.kind or formats.TEXT
        if self.bytes == 0:
            raise CorpusInvalid("empty_file", "the uploaded file is empty")
        if self.documents == 0:
            raise CorpusInvalid("no_documents",
                                "the corpus holds no documents (every line is blank)")
        if self._mode == "columns":
            self._choose_tag_column()

    def _finish_table(self) -> None:
        table = self._reading
        if table.header is None:
            raise CorpusInvalid("no_documents", "the table is empty: it needs a header row "
                                "naming its columns, then a row for each record")
        if table.rows == 0:
            raise CorpusInvalid("no_documents", "the table has a header but no rows")
        if table is self._readings.get("quoted") and table is not self._readings.get("linear"):
            self.fmt = self._format.quotes_as or self.fmt  # a TSV read with its quotes
        self.documents, self.splits = table.rows, table.splits
        self._table_kind()
