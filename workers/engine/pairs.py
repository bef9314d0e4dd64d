"""BERT's next-sentence-prediction data: segment pairs cut from documents at sentence ends.

As in BERT's create_pretraining_data: sentences of a document are gathered into a chunk of
about the target length, cut at a random sentence boundary into A and B; half the time B is
replaced by text from another document (label 1, "not next"). Each pair becomes one row
[CLS] A [SEP] B [SEP] [PAD]..., with the label in an extra last column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np
from transformers import PreTrainedTokenizerBase

from workers.engine.blocks import token_dtype, whole_text_encoder

IS_NEXT, NOT_NEXT = 0, 1
# A sentence ends after . ! ? followed by a space, or after a CJK full stop, exclamation or
# question mark (Chinese puts no space after them); closing quotes stay with their sentence.
_SENTENCE_END = re.compile(
    r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+"  # English: the end, then a space
    r"|(?<=[。！？；])(?![”’」』）])|(?<=[。！？；][”’」』）])"  # Chinese: right after it
)


def split_sentences(document: str) -> list[str]:
    """The document's sentences, English and Chinese ends alike; blank ones dropped."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(document)) if s]


def tokenize_documents(documents: Iterable[str], tokenizer: PreTrainedTokenizerBase,
                       batch: int = 256) -> Iterator[list[np.ndarray]]:
    """Each document as a list of its sentences' token ids (documents with no tokens skipped)."""
    dtype = token_dtype(len(tokenizer))
    backend = whole_text_encoder(tokenizer)
    pending: list[str] = []

    def flush() -> Iterator[list[np.ndarray]]:
        sentences = [split_sentences(doc) for doc in pending]
        flat = [s for doc in sentences for s in doc]
        encoded = iter(backend.encode_batch_fast(flat, add_special_tokens=False))
        for doc in sentences:
            ids = [np.asarray(next(encoded).ids, dtype=dtype) for _ in doc]
            ids = [s for s in ids if len(s)]
            if ids:
                yield ids

    for doc in documents:
        pending.append(doc)
        if len(pending) == batch:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


class PairMaker:
    """Makes NSP rows from tokenized documents with a seeded generator (reproducible)."""

    def __init__(self, documents: list[list[np.ndarray]], sequence_length: int,
                 tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
        self.documents = documents
        self.sequence_length = sequence_length
        self.target = sequence_length - 3  # room for [CLS] and two [SEP]
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id
        self.dtype = token_dtype(len(tokenizer))
        self.rng = np.random.default_rng(seed)

    def rows(self) -> Iterator[np.ndarray]:
        """Every pair of every document, in corpus order, as [sequence_length + 1] rows."""
        for index, document in enumerate(self.documents):
            yield from self._document_rows(index, document)

    def _document_rows(self, index: int, document: list[np.ndarray]) -> Iterator[np.ndarray]:
        chunk: list[np.ndarray] = []
        length = 0
        for i, sentence in enumerate(document):
            chunk.append(sentence)
            length += len(sentence)
            if i == len(document) - 1 or length >= self.target:
                yield self._pair(index, chunk)
                chunk, length = [], 0

    def _pair(self, index: int, chunk: list[np.ndarray]) -> np.ndarray:
        # A: the first a_end sentences of the chunk (at least one).
        a_end = int(self.rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
        a = np.concatenate(chunk[:a_end])
        if len(chunk) == 1 or self.rng.random() < 0.5:
            # B from another document, as BERT does half the time (and always when the
            # chunk is a single sentence, so there is no true next segment).
            label = NOT_NEXT
            b = self._random_segment(index, self.target - len(a))
        else:
            label = IS_NEXT
            b = np.concatenate(chunk[a_end:])
        a, b = self._truncate(a, b)
        row = np.full(self.sequence_length + 1, self.pad, dtype=self.dtype)
        pair = np.concatenate([[self.cls], a, [self.sep], b, [self.sep]]).astype(self.dtype)
        row[: len(pair)] = pair
        row[-1] = label
        return row

    def _random_segment(self, index: int, want: int) -> np.ndarray:
        others = len(self.documents)
        pick = index
        for _ in range(10):  # another document, if the corpus has one
            pick = int(self.rng.integers(others))
            if pick != index or others == 1:
                break
        sentences = self.documents[pick]
        start = int(self.rng.integers(len(sentences)))
        taken, size = [], 0
        for sentence in sentences[start:]:
            taken.append(sentence)
            size += len(sentence)
            if size >= max(1, want):
                break
        return np.concatenate(taken)

    def _truncate(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut the longer segment until both fit (from its end), keeping one token of each."""
        while len(a) + len(b) > self.target:
            if len(a) >= len(b):
                a = a[:-1] if len(a) > 1 else a
            else:
                b = b[:-1] if len(b) > 1 else b
            if len(a) == 1 and len(b) == 1:
                break
        return a, b


def split_pair_rows(rows: np.ndarray, sep_id: int, pad_id: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, token_type_ids, attention_mask, next_sentence_label) of NSP rows."""
    ids, labels = rows[:, :-1], rows[:, -1]
    real = ids != pad_id
    is_sep = ids == sep_id
    before = np.cumsum(is_sep, axis=1) - is_sep  # [SEP]s strictly before each position
    token_types = ((before >= 1) & real).astype(np.int64)
    return ids.astype(np.int64), token_types, real.astype(np.int64), labels.astype(np.int64)
