"""Checks an uploaded dataset as its bytes stream past: size, sha256, gzip, UTF-8, and what
it holds: plain documents, labelled texts (JSON lines with "label") or tagged tokens (JSON
lines with "tokens" and "tags", or CoNLL columns).

Nothing is held whole in memory: bytes are hashed and decoded incrementally, and only the
current line is buffered (up to a limit), plus, for a .txt upload, its first lines (at most
SNIFF_LINES lines or SNIFF_CHARS characters) until they tell plain text from CoNLL columns:
people keep CoNLL corpora in files named train.txt, and taking them for text would pretrain on
"EU NNP B-NP B-ORG" lines.

What each format, record and line may hold is jobspec/formats.py's (the engine reads the
same rules); this module streams the bytes past them and words their errors for the API.
"""

import codecs
import hashlib
import zlib

from jobspec import formats
from jobspec.formats import MAX_LABEL_CHARS, MAX_LABELS, FormatError
from service.domain.refusals import DomainError, Invalid, TooLarge, Unsupported

MAX_COLUMNS = 64  # CoNLL-U has 10, CoNLL-2012 about 20
SAMPLE_VALUES, SAMPLE_CHARS = 5, 40  # the first distinct values shown per column
SNIFF_LINES, SNIFF_CHARS = 1000, 64 * 1024  # what a .txt upload is judged by
# Small gzip files (a few lines) legitimately compress far better than corpora do; the
# ratio limit applies past this many decompressed bytes.
RATIO_FLOOR = 8 * 1024 * 1024
GUNZIP_STEP = 1024 * 1024  # decompressed bytes per step: each is checked before the next
# The error code of each format rule an upload breaks; the rest are invalid_dataset.
RULE_CODES = {formats.INVALID_JSON: "invalid_jsonl", formats.NO_TEXT: "invalid_jsonl"}


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
            f"{formats.UPLOAD_SUFFIXES} (or .gz of them)")
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
        file_format = formats.FORMATS[fmt]
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if file_format.gzip else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        # How lines are read: "sniff" (a .txt's first lines, kept until they decide between
        # "text" and "columns"), "text" (only counted), "json" or "columns" (each checked).
        self._mode = "sniff" if file_format.columns_as else \
            {"lines": "text", "json": "json", "columns": "columns"}[file_format.layout]
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
        lines = text.split("\n")
        if len(lines) > 1:  # the first ends a line begun in an earlier chunk
            self._piece(lines[0])
            self._end_line()
        for line in lines[1:-1]:  # whole lines: checked at once, not piece by piece
            self._whole_line(line)
        if len(lines) > 1 or lines[0]:
            self._piece(lines[-1])

    def _whole_line(self, line: str) -> None:
        if self._mode == "text":
            self.documents += bool(line.strip())
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
            self._line_has_text = False
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
            self.documents += bool(line.strip())
        elif self._mode == "columns":
            self._check_conll(line)
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
            self._line, self._line_len = [], 0

    def _check_request(self) -> None:
        """Refuse a tag column this upload cannot have, as soon as that is known."""
        wanted = self.requested_tag_column
        if wanted is None or self._mode == "sniff":
            return
        if self._mode == "json":
            raise CorpusInvalid("invalid_tag_column",
                                'tag_column is for CoNLL column files; JSON lines name their '
                                'tags in "tags"', "tag_column")
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
        split = read.split or "train"
        self.splits[split] = self.splits.get(split, 0) + 1
        self.documents += 1

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
        if self._gunzip is not None and not self._gunzip.eof:
            raise CorpusInvalid("invalid_gzip", "the gzip stream is truncated")
        try:
            tail = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorpusInvalid("invalid_encoding",
                                f"line {self.line_no} ends in the middle of a UTF-8 character"
                                ) from None
        self._text(tail)
        self._end_line()
        if self._mode == "sniff":
            self._decide()
        self.line_no -= 1
        self.kind = self.kind or formats.TEXT
        if self.bytes == 0:
            raise CorpusInvalid("empty_file", "the uploaded file is empty")
        if self.documents == 0:
            raise CorpusInvalid("no_documents",
                                "the corpus holds no documents (every line is blank)")
        if self._mode == "columns":
            self._choose_tag_column()
