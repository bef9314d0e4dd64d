"""Checks an uploaded dataset as its bytes stream past: size, sha256, gzip, UTF-8, and what
it holds: plain documents, labelled texts (JSON lines with "label") or tagged tokens (JSON
lines with "tokens" and "tags", or CoNLL columns).

Nothing is held whole in memory: bytes are hashed and decoded incrementally, and only the
current line is buffered (up to a limit).
"""

import codecs
import hashlib
import json
import zlib

FORMATS = {".txt.gz": "txt.gz", ".jsonl.gz": "jsonl.gz", ".conll.gz": "conll.gz",
           ".txt": "txt", ".jsonl": "jsonl", ".conll": "conll"}
MAX_LABELS = 1000  # distinct labels or tags a dataset may have


class CorpusRejected(Exception):
    """The upload is not an acceptable corpus; `status` is the HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def format_of(filename: str) -> str:
    lower = filename.lower()
    for suffix, fmt in FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise CorpusRejected(
        415, "unsupported_format",
        f"unsupported file type {filename!r}: upload .txt, .jsonl or .conll (or .gz of them)")


class CorpusInspector:
    def __init__(self, fmt: str, *, max_bytes: int, max_uncompressed: int,
                 max_line_bytes: int) -> None:
        self.fmt = fmt
        self.max_bytes, self.max_uncompressed = max_bytes, max_uncompressed
        self.max_line_bytes = max_line_bytes
        self.bytes = 0
        self.uncompressed = 0
        self.documents = 0
        self.line_no = 1
        self._sha = hashlib.sha256()
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if fmt.endswith(".gz") else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._buffered = not fmt.startswith("txt")
        self._line: list[str] = []  # the current, unfinished line (jsonl and conll)
        self._line_len = 0
        self._line_has_text = False  # txt: does the current line hold any non-space?
        # What the data holds: "text", "labelled_text" or "tagged_tokens"; labels seen.
        self.kind: str | None = "tagged_tokens" if fmt.startswith("conll") else None
        self.labels: set[str] = set()
        self.splits: dict[str, int] = {}
        self._in_sentence = False  # conll: inside a sentence

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            raise CorpusRejected(413, "payload_too_large",
                                 f"upload exceeds the limit of {self.max_bytes} bytes")
        self._sha.update(chunk)
        if self._gunzip is not None:
            try:
                # Bounded output per call keeps a gzip bomb from inflating in memory.
                data = self._gunzip.decompress(chunk, 4 * 1024 * 1024)
                while self._gunzip.unconsumed_tail:
                    self._decoded(data)
                    data = self._gunzip.decompress(self._gunzip.unconsumed_tail, 4 * 1024 * 1024)
            except zlib.error as exc:
                raise CorpusRejected(422, "invalid_gzip", f"not a valid gzip file: {exc}") from None
            self._decoded(data)
        else:
            self._decoded(chunk)

    def _decoded(self, data: bytes) -> None:
        self.uncompressed += len(data)
        if self.uncompressed > self.max_uncompressed:
            raise CorpusRejected(413, "payload_too_large",
                                 f"corpus exceeds {self.max_uncompressed} bytes uncompressed")
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            line = self.line_no + data.count(b"\n", 0, max(exc.start, 0))
            raise CorpusRejected(
                422, "invalid_encoding",
                f"line {line} is not valid UTF-8 ({exc.reason}); save the file as UTF-8",
            ) from None
        self._text(text)

    def _text(self, text: str) -> None:
        start = 0
        while (end := text.find("\n", start)) != -1:
            self._piece(text[start:end])
            self._end_line()
            start = end + 1
        self._piece(text[start:])

    def _piece(self, piece: str) -> None:
        if not piece:
            return
        if self._buffered:
            self._line_len += len(piece)
            if self._line_len > self.max_line_bytes:
                raise CorpusRejected(413, "line_too_long",
                                     f"line {self.line_no} is longer than "
                                     f"{self.max_line_bytes} characters")
            self._line.append(piece)
        elif not self._line_has_text and piece.strip():
            self._line_has_text = True

    def _end_line(self) -> None:
        if self._buffered:
            line = "".join(self._line).strip()
            self._line, self._line_len = [], 0
            if self.fmt.startswith("conll"):
                self._check_conll(line)
            elif line:
                self._check_json(line)
        elif self._line_has_text:
            self.documents += 1
        self._line_has_text = False
        self.line_no += 1

    def _bad(self, message: str) -> CorpusRejected:
        return CorpusRejected(422, "invalid_dataset", f"line {self.line_no}: {message}")

    def _label(self, value: str) -> None:
        self.labels.add(value)
        if len(self.labels) > MAX_LABELS:
            raise self._bad(f"more than {MAX_LABELS} distinct labels")

    def _check_json(self, line: str) -> None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusRejected(422, "invalid_jsonl",
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
                raise CorpusRejected(422, "invalid_jsonl",
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
        if line.startswith("#"):
            return
        if not line:
            self._in_sentence = False
            return
        columns = line.split("\t") if "\t" in line else line.split()
        if len(columns) < 2:
            raise self._bad("a CoNLL line needs a token and a tag column")
        self._label(columns[1].strip())
        if not self._in_sentence:
            self._in_sentence = True
            self.documents += 1

    def finish(self) -> None:
        """Call after the last chunk; raises if the corpus is truncated or empty."""
        if self._gunzip is not None and not self._gunzip.eof:
            raise CorpusRejected(422, "invalid_gzip", "the gzip stream is truncated")
        try:
            tail = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorpusRejected(422, "invalid_encoding",
                                 f"line {self.line_no} ends in the middle of a UTF-8 character"
                                 ) from None
        self._text(tail)
        self._end_line()
        self.line_no -= 1
        self.kind = self.kind or "text"
        if self.bytes == 0:
            raise CorpusRejected(422, "empty_file", "the uploaded file is empty")
        if self.documents == 0:
            raise CorpusRejected(422, "no_documents",
                                 "the corpus holds no documents (every line is blank)")
