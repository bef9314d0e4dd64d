"""Checks an uploaded dataset as its bytes stream past: size, sha256, gzip, UTF-8, and what
it holds: plain documents, labelled texts (JSON lines with "label") or tagged tokens (JSON
lines with "tokens" and "tags", or CoNLL columns).

Nothing is held whole in memory: bytes are hashed and decoded incrementally, and only the
current line is buffered (up to a limit), plus, for a .txt upload, its first lines (at most
SNIFF_LINES lines or SNIFF_CHARS characters) until they tell plain text from CoNLL columns:
people keep CoNLL corpora in files named train.txt, and taking them for text would pretrain on
"EU NNP B-NP B-ORG" lines.
"""

import codecs
import hashlib
import json
import re
import zlib

from service.domain.errors import DomainError, Invalid, TooLarge, Unsupported

FORMATS = {".txt.gz": "txt.gz", ".jsonl.gz": "jsonl.gz", ".conll.gz": "conll.gz",
           ".txt": "txt", ".jsonl": "jsonl", ".conll": "conll"}
MAX_LABELS = 1000  # distinct labels or tags a dataset may have
MAX_LABEL_CHARS = 100  # a longer "label" is a mistake (a text column), and bloats every answer
MAX_COLUMNS = 64  # CoNLL-U has 10, CoNLL-2012 about 20
SAMPLE_VALUES, SAMPLE_CHARS = 5, 40  # the first distinct values shown per column
SNIFF_LINES, SNIFF_CHARS = 1000, 64 * 1024  # what a .txt upload is judged by
# Small gzip files (a few lines) legitimately compress far better than corpora do; the
# ratio limit applies past this many decompressed bytes.
RATIO_FLOOR = 8 * 1024 * 1024
GUNZIP_STEP = 1024 * 1024  # decompressed bytes per step: each is checked before the next
# BIO/IOB1/IOB2/IOBES/BILOU tags: O, or a position prefix and an entity type.
BIO_TAG = re.compile(r"O|[BIESLU]-\S+")


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
    lower = filename.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise CorpusUnsupported(
        "unsupported_format",
        f"unsupported file type {filename!r}: upload .txt, .jsonl or .conll (or .gz of them)")


def split_columns(line: str) -> list[str]:
    """The columns of a stripped CoNLL line, split as the engine splits them: at tabs if
    the line has any, else at runs of spaces."""
    return line.split("\t") if "\t" in line else line.split()


def looks_like_bio(values: set[str] | None) -> bool:
    """True for a set of BIO/IOBES tags: all O or prefixed, and not only O."""
    return bool(values) and values != {"O"} and all(BIO_TAG.fullmatch(v) for v in values or ())


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
        stripped = line.strip()
        if not stripped:
            in_sentence = False
            continue
        if not in_sentence and stripped.startswith("#"):
            continue  # a comment
        columns = split_columns(stripped)
        if columns[0] == "-DOCSTART-":
            docstart = True
            continue
        if len(columns) != len(stripped.split()):
            return f"line {line_no} has spaces inside its tab-separated columns"
        if len(columns) < 2:
            return f"line {line_no} has a single column"
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
    if told or docstart or any(looks_like_bio(v) for v in values):
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
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if fmt.endswith(".gz") else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        # How lines are read: "sniff" (a .txt's first lines, kept until they decide between
        # "text" and "columns"), "text" (only counted), "json" or "columns" (each checked).
        self._mode = "sniff" if fmt.startswith("txt") else \
            "columns" if fmt.startswith("conll") else "json"
        self._line: list[str] = []  # the current, unfinished line (all but text)
        self._line_len = 0
        self._line_has_text = False  # text: does the current line hold any non-space?
        self._sample: list[str] = []  # sniff: the lines so far
        self._sample_chars = self._sample_rows = 0
        self._not_columns: str | None = None  # why a .txt was read as text
        # What the data holds: "text", "labelled_text" or "tagged_tokens"; labels seen.
        self.kind: str | None = "tagged_tokens" if self._mode == "columns" else None
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
            self._check_conll(line.strip())
        elif line.strip():
            self._check_json(line.strip())

    def _decide(self) -> None:
        """A .txt's first lines are in: read it as text or as CoNLL columns from here on,
        and check the lines kept so far as such."""
        why = sniff_columns(self._sample, told=self.requested_tag_column is not None)
        self._mode = "text" if why else "columns"
        self._not_columns = why
        if self._mode == "columns":
            self.fmt = self.declared.replace("txt", "conll")
            self.kind = "tagged_tokens"
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

    def _label(self, value: str) -> None:
        if not value.strip():
            raise self._bad("a blank label or tag")
        if len(value) > MAX_LABEL_CHARS:
            raise self._bad(f"a label or tag longer than {MAX_LABEL_CHARS} characters "
                            f"({value[:20]!r}...)")
        self.labels.add(value)
        if len(self.labels) > MAX_LABELS:
            raise self._bad(f"more than {MAX_LABELS} distinct labels")

    def _check_json(self, line: str) -> None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusInvalid("invalid_jsonl",
                                f"line {self.line_no} is not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise self._bad("not a JSON object")
        kind = "tagged_tokens" if "tokens" in record else \
            "labelled_text" if "label" in record else "text"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind and (self.kind, kind) != ("labelled_text", "text"):
            raise self._bad(f"a {kind.replace('_', ' ')} record among {self.kind} records")
        if kind == "tagged_tokens":
            tokens, tags = record.get("tokens"), record.get("tags")
            if not (isinstance(tokens, list) and isinstance(tags, list)
                    and len(tokens) == len(tags) and tokens
                    and all(isinstance(t, str) for t in tokens)
                    and all(isinstance(t, str) for t in tags)):
                raise self._bad('"tokens" and "tags" must be lists of strings of equal length')
            for tag in tags:
                self._label(tag)
        else:
            if not isinstance(record.get("text"), str):
                raise CorpusInvalid("invalid_jsonl",
                                    f'line {self.line_no} is not an object with a string "text"')
            if not record["text"].strip():
                return
            if self.kind == "labelled_text":
                label = record.get("label")
                if isinstance(label, bool) or not isinstance(label, str | int):
                    raise self._bad('every record needs a "label" (a string or an integer)')
                self._label(str(label))
        split = record.get("split", "train")
        if split not in ("train", "valid", "validation", "test"):
            raise self._bad(f'"split" must be train, valid or test, not {split!r}')
        self.splits[split] = self.splits.get(split, 0) + 1
        self.documents += 1

    def _check_conll(self, line: str) -> None:
        """One stripped line of a column file, read as the engine reads it: blank lines end
        sentences, '#' before a sentence is a comment, -DOCSTART- lines are skipped."""
        if not line:
            self._in_sentence = False
            return
        if not self._in_sentence and line.startswith("#"):
            return
        columns = split_columns(line)
        if columns[0] == "-DOCSTART-":
            return
        if len(columns) < 2:
            raise self._bad("a CoNLL line needs a token and a tag column")
        if self.columns is None:
            if len(columns) > MAX_COLUMNS:
                raise self._bad(f"more than {MAX_COLUMNS} columns")
            self.columns = len(columns)
            self._columns = [_Column() for _ in columns]
            self._check_request()
        elif len(columns) != self.columns:
            # The tag column is a position: it must mean the same on every line.
            read_as = " (this .txt was read as CoNLL columns from its first lines)" \
                if self.declared.startswith("txt") else ""
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
            index = self.columns - 1 if looks_like_bio(last.values) else 1
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
        self.kind = self.kind or "text"
        if self.bytes == 0:
            raise CorpusInvalid("empty_file", "the uploaded file is empty")
        if self.documents == 0:
            raise CorpusInvalid("no_documents",
                                "the corpus holds no documents (every line is blank)")
        if self._mode == "columns":
            self._choose_tag_column()
