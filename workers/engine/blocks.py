"""Turn documents into fixed-length token blocks, read them from shards and sample batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.int32)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def whole_text_encoder(tokenizer: PreTrainedTokenizerBase) -> Any:
    """The tokenizer's Rust backend, copied, with no truncation or padding: a tokenizer.json
    as the Hub ships it may carry either (all-MiniLM-L6-v2's truncates at 128 tokens), and
    pretraining text is packed whole, not cut per document."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def encode_batches(
    documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, separator: int,
    docs_per_batch: int = 256,
) -> Iterator[np.ndarray]:
    """Tokenize documents in batches into a 1-D id stream, yielded piecewise, with the
    separator token ([SEP], </s> or the end-of-text token) between documents."""
    dtype = token_dtype(len(tokenizer))
    backend = whole_text_encoder(tokenizer)
    started = False
    for batch in _batched(documents, docs_per_batch):
        ids: list[int] = []
        for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
            if not encoding.ids:  # e.g. a line of control characters only
                continue
            if started:
                ids.append(separator)
            started = True
            ids.extend(encoding.ids)
        if ids:
            yield np.asarray(ids, dtype=dtype)


class BlockPacker:
    """Cuts a token stream, fed piecewise, into rows of sequence_length tokens: framed as
    start + (length - 2) tokens + end for encoders ([CLS] ... [SEP], <s> ... </s>), or
    plain for decoders (start and end None), which see document ends as separators."""

    def __init__(self, sequence_length: int, dtype: np.dtype, start: int | None = None,
                 end: int | None = None) -> None:
        self.framed = start is not None and end is not None
        self.body = sequence_length - 2 if self.framed else sequence_length
        self.sequence_length, self.start, self.end = sequence_length, start, end
        self.rest = np.zeros(0, dtype=dtype)  # the tail that does not fill a block yet
        self.tokens = 0

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Append ids; return the blocks completed (possibly none). The final tail is dropped."""
        self.tokens += len(ids)
        stream = np.concatenate([self.rest, ids])
        n = len(stream) // self.body
        body = stream[: n * self.body].reshape(n, self.body)
        self.rest = stream[n * self.body :]
        if not self.framed:
            return body
        blocks = np.empty((n, self.sequence_length), dtype=stream.dtype)
        blocks[:, 0] = self.start
        blocks[:, 1:-1] = body
        blocks[:, -1] = self.end
        return blocks


class ShardedBlocks:
    """The training blocks of several .npy shards, memory-mapped, addressed by one index."""

    def __init__(self, paths: list[Path]) -> None:
        self.shards = [np.load(path, mmap_mode="r") for path in paths]
        self.sizes = [len(shard) for shard in self.shards]
        self.offsets = np.cumsum([0, *self.sizes])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given global indices, in that order, as an int64 array."""
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), self.shards[0].shape[1]), dtype=np.int64)
        for shard in np.unique(shard_of):
            rows = shard_of == shard
            out[rows] = self.shards[shard][indices[rows] - self.offsets[shard]]
        return out


class BlockSampler:
    """Yields batches of training-block indices: each epoch visits the shards in a seeded order
    and each shard's blocks in a seeded order, so memory stays at one shard's permutation.

    Its whole state is (epoch, position), so a run can resume exactly, without replaying data.
    """

    def __init__(self, shard_sizes: list[int], batch_size: int, seed: int,
                 epoch: int = 0, position: int = 0) -> None:
        self.sizes, self.batch_size, self.seed = list(shard_sizes), batch_size, seed
        self.total = sum(self.sizes)
        self.epoch, self.position = epoch, position
        self._cached: tuple[int, int, np.ndarray] | None = None  # (epoch, shard, order)

    def _shard_at(self, position: int) -> tuple[int, int, int]:
        """(shard, global offset of that shard, start of it in this epoch's sequence)."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.sizes))
        start = 0
        for shard in order:
            if position < start + self.sizes[shard]:
                return int(shard), sum(self.sizes[:shard]), start
            start += self.sizes[shard]
        raise AssertionError("position past the end of the epoch")

    def _shard_order(self, shard: int) -> np.ndarray:
        if self._cached is None or self._cached[:2] != (self.epoch, shard):
            rng = np.random.default_rng([self.seed, self.epoch, shard])
            self._cached = (self.epoch, shard, rng.permutation(self.sizes[shard]))
        return self._cached[2]

    def next_batch(self) -> np.ndarray:
        """The next batch_size global block indices; a batch may span shards and epochs."""
        parts, need = [], self.batch_size
        while need:
            shard, offset, start = self._shard_at(self.position)
            local = self.position - start
            part = self._shard_order(shard)[local : local + need] + offset
            parts.append(part)
            need -= len(part)
            self.position += len(part)
            if self.position == self.total:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts)

    def state(self) -> dict[str, int]:
        """JSON-able position in the sampling sequence."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}
