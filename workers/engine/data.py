"""Tokenize a corpus once into token-block shards that any later run can memory-map.

Layout of a prepared data directory (meta.json is written last: its presence means complete):
  tokenizer/          the trained tokenizer (save_pretrained), or the base model's
  train-00000.npy...  training rows, [n, row_width], at most SHARD_BYTES each
  valid.npy           the held-out rows
  meta.json           counts, dtype, vocab size, row width, data_key, format version

A row is a block of sequence_length tokens ([CLS] ... [SEP] for encoders, plain for
decoders), or for mlm_nsp a padded segment pair plus its label in one more column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from jobspec import PretrainSpec
from jobspec.shard_key import DATA_FORMAT_VERSION, data_key
from workers.engine.blocks import BlockPacker, encode_batches, token_dtype
from workers.engine.corpus_reader import iter_documents
from workers.engine.failures import CorpusError, EngineError, StopRequested
from workers.engine.pairs import PairMaker, tokenize_documents
from workers.engine.reporter import Reporter
from workers.engine.tokenizer import count_characters, load_tokenizer, train_tokenizer

META = "meta.json"
TOKENIZER_DIR = "tokenizer"
VALID_FILE = "valid.npy"
# A shard's size bounds the memory preparation needs: one shard is buffered before writing.
SHARD_BYTES = 32 * 2**20
# The held-out blocks depend only on the corpus, tokenizer and sequence length, not on the
# run's seed, so eval losses of runs with different seeds are measured on the same text.
SPLIT_SEED = 0
STOP_POLL_DOCUMENTS = 256  # while reading the corpus, ask should_stop() this often


class _Documents:
    """Re-iterable corpus view that counts documents and polls for a stop request."""

    def __init__(self, path: str, corpus_format: str, reporter: Reporter,
                 columns: dict[str, str] | None = None) -> None:
        self.path, self.format, self.reporter = path, corpus_format, reporter
        self.columns = columns  # a table's text column ({"text": ...}); None: by its name
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        self.count = 0
        for doc in iter_documents(self.path, self.format, self.columns):
            if self.count % STOP_POLL_DOCUMENTS == 0 and self.reporter.should_stop():
                raise StopRequested("stopped while reading the corpus")
            self.count += 1
            yield doc


class _ShardWriter:
    """Buffers training blocks and writes full shards; the last shard stays open until close."""

    def __init__(self, out: Path, width: int, dtype: np.dtype) -> None:
        self.out = out
        self.capacity = max(1, SHARD_BYTES // (width * dtype.itemsize))
        self.buffer = np.empty((self.capacity, width), dtype=dtype)
        self.fill, self.total = 0, 0
        self.shards: list[dict[str, Any]] = []

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
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                        shape=(self.count, self.sequence_length))
        if self.count:
            rows = np.memmap(self.raw, dtype=self.dtype, mode="r",
                             shape=(self.count, self.sequence_length))
            step = max(1, SHARD_BYTES // (self.sequence_length * self.dtype.itemsize))
            for start in range(0, self.count, step):
                out[start : start + step] = rows[start : start + step]
            del rows
        out.flush()
        del out
        self.raw.unlink()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_data(spec: PretrainSpec, corpus_path: str, corpus_format: str, out_dir: str,
                 reporter: Reporter, base_model_dir: str | None = None) -> dict[str, Any]:
    """Train the tokenizer (or take the base model's), encode and pack the corpus into
    shards under out_dir; return meta.

    Streaming passes over the corpus (characters, tokenizer training, encoding); mlm_nsp
    holds the tokenized corpus in memory, as it draws segments from random documents.
    Raises CorpusError for an unusable corpus and StopRequested if should_stop() says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    seq = spec.hyperparameters.sequence_length
    documents = _Documents(corpus_path, corpus_format, reporter, spec.columns)
    tokenizer = _tokenizer(spec, documents, reporter, base_model_dir)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)

    dtype = token_dtype(len(tokenizer))
    width = seq + 1 if spec.objective == "mlm_nsp" else seq
    train = _ShardWriter(out, width, dtype)
    valid = _RowFile(out / VALID_FILE, width, dtype)
    split = np.random.default_rng(SPLIT_SEED)
    rows, tokens = _rows(spec, documents, tokenizer)
    for block in rows:
        # One uniform draw per row, in corpus order: the split does not depend on batching.
        (valid if split.random() < spec.validation_fraction else train).add(block)
    if train.total + valid.count < 2:
        valid.close()
        body = {"mlm": seq - 2, "clm": seq}.get(spec.objective or "")
        need = f"but at least {2 * body} are needed" if body else "too few"
        raise CorpusError(
            f"the corpus is too small: it has {tokens()} tokens, {need} to make 2 rows of "
            f"sequence_length {seq}; add text or lower sequence_length"
        )
    # At least one row on each side (a tiny corpus or an extreme fraction).
    if valid.count == 0:
        valid.add(train.pop())
    valid.close()
    if train.total == 0:
        held = np.load(out / VALID_FILE)
        np.save(out / VALID_FILE, held[:-1])
        train.add(held[-1])
    n_valid = len(np.load(out / VALID_FILE, mmap_mode="r"))
    shards = train.close()

    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "data_key": data_key(spec),
        "dtype": dtype.name,
        "vocab_size": len(tokenizer),
        "sequence_length": seq,
        "row_width": width,
        "objective": spec.objective,
        "documents": documents.count,
        "tokens": tokens(),
        "train_blocks": train.total,
        "validation_blocks": n_valid,
        "shards": shards,
        "tokenizer": {**spec.tokenizer.model_dump(mode="json"), "vocab_size": len(tokenizer),
                      "class": type(tokenizer).__name__},
    }
    _write_json(out / META, meta)
    reporter.event("info", f"tokenized {tokens()} tokens into {train.total + n_valid} "
                           f"rows ({train.total} train in {len(shards)} shards / {n_valid} "
                           "validation)")
    return meta


def _tokenizer(spec: PretrainSpec, documents: _Documents, reporter: Reporter,
               base_model_dir: str | None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer (from_model), or one trained on the corpus."""
    if spec.tokenizer.type == "from_model":
        if base_model_dir is None:
            raise EngineError("tokenizer from_model needs the base model's files")
        tokenizer = load_tokenizer(base_model_dir)
        reporter.event("info", f"using the base model's tokenizer ({len(tokenizer)} tokens)")
        return tokenizer
    char_counts = count_characters(documents)
    if documents.count == 0:
        raise CorpusError("the corpus has no documents: the file is empty or has only "
                          "blank lines")
    reporter.event("info", f"training {spec.tokenizer.type} tokenizer "
                           f"(vocab {spec.tokenizer.vocab_size}) on {documents.count} documents")
    tokenizer = train_tokenizer(documents, char_counts, spec.tokenizer, spec.model.architecture,
                                spec.model.max_position_embeddings)
    reporter.event("info", f"trained tokenizer: {len(tokenizer)} tokens in the vocabulary")
    return tokenizer


def _rows(spec: PretrainSpec, documents: _Documents, tokenizer: PreTrainedTokenizerBase
          ) -> tuple[Iterator[np.ndarray], Any]:
    """The rows of the corpus for this objective, and a function giving the tokens read."""
    seq = spec.hyperparameters.sequence_length
    dtype = token_dtype(len(tokenizer))
    if spec.objective == "mlm_nsp":
        docs = list(tokenize_documents(documents, tokenizer))
        if not docs:
            raise CorpusError("the corpus has no documents with text")
        total = sum(len(s) for doc in docs for s in doc)
        pairs = PairMaker(docs, seq, tokenizer, SPLIT_SEED)
        return pairs.rows(), lambda: total
    if spec.objective == "clm":
        # Plain blocks; documents are separated by the end-of-text token.
        packer = BlockPacker(seq, dtype)
        separator = tokenizer.eos_token_id
    else:
        packer = BlockPacker(seq, dtype, tokenizer.cls_token_id, tokenizer.sep_token_id)
        separator = tokenizer.sep_token_id

    def rows() -> Iterator[np.ndarray]:
        for ids in encode_batches(documents, tokenizer, separator):
            yield from packer.add(ids)

    return rows(), lambda: packer.tokens


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


def load_data_tokenizer(data_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the prepared data."""
    return load_tokenizer(Path(data_dir) / TOKENIZER_DIR)
