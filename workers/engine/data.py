"""Tokenize a corpus once into token-block shards that any later run can memory-map.

Layout of a prepared data directory (meta.json is written last: its presence means complete):
  tokenizer/          the trained tokenizer (save_pretrained)
  train-00000.npy...  training blocks, [n, sequence_length], at most SHARD_BYTES each
  valid.npy           the held-out blocks
  meta.json           counts, dtype, vocab size, sequence_length, data_key, format version
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from transformers import BertTokenizer

from workers.engine.blocks import BlockPacker, encode_batches, token_dtype
from workers.engine.config import PretrainConfig
from workers.engine.corpus import iter_documents
from workers.engine.errors import CorpusError, EngineError, StopRequested
from workers.engine.reporter import Reporter
from workers.engine.tokenizer import count_characters, train_tokenizer

DATA_FORMAT_VERSION = 1
META = "meta.json"
TOKENIZER_DIR = "tokenizer"
VALID_FILE = "valid.npy"
# A shard's size bounds the memory preparation needs: one shard is buffered before writing.
SHARD_BYTES = 32 * 2**20
# The held-out blocks depend only on the corpus, tokenizer and sequence length, not on the
# run's seed, so eval losses of runs with different seeds are measured on the same text.
SPLIT_SEED = 0
STOP_POLL_DOCUMENTS = 256  # while reading the corpus, ask should_stop() this often


def data_key(config: PretrainConfig) -> str:
    """Short stable hash of every setting that changes the prepared data."""
    settings = {
        "format_version": DATA_FORMAT_VERSION,
        "tokenizer": asdict(config.tokenizer),
        # Stored in the tokenizer as model_max_length.
        "max_position_embeddings": config.model.max_position_embeddings,
        "sequence_length": config.hyperparameters.sequence_length,
        "validation_fraction": config.validation_fraction,
    }
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class _Documents:
    """Re-iterable corpus view that counts documents and polls for a stop request."""

    def __init__(self, path: str, corpus_format: str, reporter: Reporter) -> None:
        self.path, self.format, self.reporter = path, corpus_format, reporter
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        self.count = 0
        for doc in iter_documents(self.path, self.format):
            if self.count % STOP_POLL_DOCUMENTS == 0 and self.reporter.should_stop():
                raise StopRequested("stopped while reading the corpus")
            self.count += 1
            yield doc


class _ShardWriter:
    """Buffers training blocks and writes full shards; the last shard stays open until close."""

    def __init__(self, out: Path, sequence_length: int, dtype: np.dtype) -> None:
        self.out = out
        self.capacity = max(1, SHARD_BYTES // (sequence_length * dtype.itemsize))
        self.buffer = np.empty((self.capacity, sequence_length), dtype=dtype)
        self.fill, self.shards, self.total = 0, [], 0

    def add(self, block: np.ndarray) -> None:
        if self.fill == self.capacity:  # flushed lazily, so the last block stays in memory
            self._flush()
        self.buffer[self.fill] = block
        self.fill += 1
        self.total += 1

    def pop(self) -> np.ndarray:
        """Take back the last block added (only ever needed for tiny corpora)."""
        self.fill -= 1
        self.total -= 1
        return self.buffer[self.fill].copy()

    def _flush(self) -> None:
        name = f"train-{len(self.shards):05d}.npy"
        np.save(self.out / name, self.buffer[: self.fill])
        self.shards.append({"file": name, "blocks": self.fill})
        self.fill = 0

    def close(self) -> list[dict[str, Any]]:
        if self.fill:
            self._flush()
        return self.shards


class _RowFile:
    """Rows streamed to a raw file, turned into an .npy at the end (count unknown up front)."""

    def __init__(self, path: Path, sequence_length: int, dtype: np.dtype) -> None:
        self.path, self.raw = path, path.with_suffix(".raw")
        self.sequence_length, self.dtype = sequence_length, dtype
        self.fh = self.raw.open("wb")
        self.count = 0

    def add(self, block: np.ndarray) -> None:
        self.fh.write(block.tobytes())
        self.count += 1

    def close(self) -> None:
        self.fh.close()
        # Copied into the .npy a shard's worth at a time: a large held-out set (up to half
        # the corpus) is never in memory at once.
        rows = np.memmap(self.raw, dtype=self.dtype, mode="r",
                         shape=(self.count, self.sequence_length)) if self.count else None
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                        shape=(self.count, self.sequence_length))
        step = max(1, SHARD_BYTES // (self.sequence_length * self.dtype.itemsize))
        for start in range(0, self.count, step):
            out[start : start + step] = rows[start : start + step]
        out.flush()
        del out, rows
        self.raw.unlink()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_data(config: PretrainConfig, corpus_path: str, corpus_format: str, out_dir: str,
                 reporter: Reporter) -> dict[str, Any]:
    """Train the tokenizer, encode and pack the corpus into shards under out_dir; return meta.

    Three streaming passes over the corpus (characters, tokenizer training, encoding).
    Raises CorpusError for an unusable corpus and StopRequested if should_stop() says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    hp = config.hyperparameters
    seq = hp.sequence_length
    documents = _Documents(corpus_path, corpus_format, reporter)

    char_counts = count_characters(documents)
    if documents.count == 0:
        raise CorpusError("the corpus has no documents: the file is empty or has only "
                          "blank lines")
    reporter.event("info", f"training {config.tokenizer.type} tokenizer "
                           f"(vocab {config.tokenizer.vocab_size}) on {documents.count} documents")
    tokenizer = train_tokenizer(documents, char_counts, config.tokenizer,
                                config.model.max_position_embeddings)
    vocab_size = len(tokenizer)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    reporter.event("info", f"trained tokenizer: {vocab_size} tokens in the vocabulary")

    dtype = token_dtype(vocab_size)
    packer = BlockPacker(seq, tokenizer.cls_token_id, tokenizer.sep_token_id, dtype)
    train = _ShardWriter(out, seq, dtype)
    valid = _RowFile(out / VALID_FILE, seq, dtype)
    split = np.random.default_rng(SPLIT_SEED)
    for ids in encode_batches(documents, tokenizer):
        blocks = packer.add(ids)
        # One uniform draw per block, in corpus order: the split does not depend on batching.
        held_out = split.random(len(blocks)) < config.validation_fraction
        for block, is_valid in zip(blocks, held_out, strict=True):
            (valid if is_valid else train).add(block)
    if train.total + valid.count < 2:
        valid.close()
        raise CorpusError(
            f"the corpus is too small: it has {packer.tokens} tokens, but at least "
            f"{2 * (seq - 2)} are needed to make 2 blocks of sequence_length {seq}; "
            "add text or lower sequence_length"
        )
    # At least one block on each side (a tiny corpus or an extreme fraction).
    if valid.count == 0:
        valid.add(train.pop())
    valid.close()
    if train.total == 0:
        rows = np.load(out / VALID_FILE)
        np.save(out / VALID_FILE, rows[:-1])
        train.add(rows[-1])
    n_valid = len(np.load(out / VALID_FILE, mmap_mode="r"))
    shards = train.close()

    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "data_key": data_key(config),
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "sequence_length": seq,
        "documents": documents.count,
        "tokens": packer.tokens,
        "train_blocks": train.total,
        "validation_blocks": n_valid,
        "shards": shards,
        "tokenizer": {"type": config.tokenizer.type, "vocab_size": vocab_size,
                      "lowercase": config.tokenizer.lowercase},
    }
    _write_json(out / META, meta)
    reporter.event("info", f"tokenized {packer.tokens} tokens into {train.total + n_valid} "
                           f"blocks ({train.total} train in {len(shards)} shards / {n_valid} "
                           "validation)")
    return meta


def load_meta(data_dir: str | Path) -> dict[str, Any]:
    """The meta.json of a prepared data directory; EngineError if it is missing or foreign."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise EngineError(f"no prepared data in {data_dir} (meta.json missing)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != DATA_FORMAT_VERSION:
        raise EngineError(f"prepared data format {meta.get('format_version')} is not "
                          f"{DATA_FORMAT_VERSION}; prepare the data again")
    return meta


def load_tokenizer(data_dir: str | Path) -> BertTokenizer:
    """The tokenizer saved with the prepared data."""
    return BertTokenizer.from_pretrained(str(Path(data_dir) / TOKENIZER_DIR))
