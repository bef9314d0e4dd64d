"""Turn documents into fixed-length token blocks, split them, and sample training batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
from transformers import PreTrainedTokenizerBase

# The held-out blocks depend only on the corpus, tokenizer and sequence length, not on the
# run's seed, so eval losses of runs with different seeds are measured on the same text.
SPLIT_SEED = 0


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer dtype that holds every token id."""
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.int32)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def encode_corpus(
    documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, docs_per_batch: int = 256
) -> np.ndarray:
    """Tokenize documents in batches into one 1-D id stream, with [SEP] between documents."""
    dtype = token_dtype(len(tokenizer))
    backend = tokenizer.backend_tokenizer
    sep = tokenizer.sep_token_id
    chunks: list[np.ndarray] = []
    for batch in _batched(documents, docs_per_batch):
        ids: list[int] = []
        for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
            if not encoding.ids:  # e.g. a line of control characters only
                continue
            if chunks or ids:
                ids.append(sep)
            ids.extend(encoding.ids)
        if ids:
            chunks.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


def pack_blocks(stream: np.ndarray, sequence_length: int, cls_id: int, sep_id: int) -> np.ndarray:
    """Cut the stream into [CLS] + (sequence_length - 2) tokens + [SEP] rows; drop the tail."""
    body = sequence_length - 2
    n = len(stream) // body
    blocks = np.empty((n, sequence_length), dtype=stream.dtype)
    blocks[:, 0] = cls_id
    blocks[:, 1:-1] = stream[: n * body].reshape(n, body)
    blocks[:, -1] = sep_id
    return blocks


def split_blocks(blocks: np.ndarray, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a random validation_fraction of blocks (at least one, leaving one to train on)."""
    n = len(blocks)
    n_valid = min(max(1, round(validation_fraction * n)), n - 1)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    # Sorted indices keep both splits in corpus order; the sampler does the shuffling.
    return blocks[np.sort(order[n_valid:])], blocks[np.sort(order[:n_valid])]


class BlockSampler:
    """Yields batches of training-block indices, one seeded permutation per epoch.

    Its whole state is (epoch, position), so a run can later resume exactly where it was.
    """

    def __init__(self, num_blocks: int, batch_size: int, seed: int,
                 epoch: int = 0, position: int = 0) -> None:
        self.num_blocks, self.batch_size, self.seed = num_blocks, batch_size, seed
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def next_batch(self) -> np.ndarray:
        """The next batch_size block indices; a batch may span an epoch boundary."""
        parts, need = [], self.batch_size
        while need:
            part = self._order[self.position : self.position + need]
            parts.append(part)
            need -= len(part)
            self.position += len(part)
            if self.position == self.num_blocks:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(parts)

    def state(self) -> dict[str, int]:
        """JSON-able position in the sampling sequence."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}
