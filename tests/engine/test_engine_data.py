"""prepare_data: shards, held-out blocks, meta.json, data_key, and reuse by later runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobspec import parse_spec
from workers.engine import EngineError, StopRequested, data_key, prepare_data, run_pretraining
from workers.engine import data as data_module
from workers.engine.blocks import BlockPacker, encode_batches
from workers.engine.corpus_reader import iter_documents
from workers.engine.data import load_data_tokenizer as load_tokenizer


def test_meta_and_files(en_data, make_config):
    meta = json.loads((en_data / "meta.json").read_text())
    assert meta["format_version"] == data_module.DATA_FORMAT_VERSION
    assert meta["data_key"] == data_key(make_config())
    assert meta["sequence_length"] == 64 and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == len(load_tokenizer(en_data)) <= 2000
    valid = np.load(en_data / "valid.npy")
    train = np.concatenate([np.load(en_data / s["file"]) for s in meta["shards"]])
    assert len(train) == meta["train_blocks"] and len(valid) == meta["validation_blocks"]
    assert train.shape[1] == valid.shape[1] == 64
    assert 0.005 < len(valid) / (len(train) + len(valid)) < 0.05  # validation_fraction 0.02


def test_small_shards_hold_every_block_once(en_corpus, tmp_path, reporter, make_config,
                                            monkeypatch):
    monkeypatch.setattr(data_module, "SHARD_BYTES", 64 * 2 * 100)  # 100 blocks per shard
    meta = prepare_data(make_config(), str(en_corpus), "txt", str(tmp_path), reporter)
    assert len(meta["shards"]) > 3 and all(s["blocks"] <= 100 for s in meta["shards"])
    assert [s["file"] for s in meta["shards"]][:2] == ["train-00000.npy", "train-00001.npy"]
    shards = [np.load(tmp_path / s["file"]) for s in meta["shards"]]
    got = np.concatenate([*shards, np.load(tmp_path / "valid.npy")])
    # The same blocks as packing the whole stream in one go, each exactly once.
    tokenizer = load_tokenizer(tmp_path)
    packer = BlockPacker(64, np.dtype("uint16"), tokenizer.cls_token_id, tokenizer.sep_token_id)
    stream = np.concatenate(list(encode_batches(iter_documents(str(en_corpus), "txt"),
                                                tokenizer, tokenizer.sep_token_id)))
    expected = packer.add(stream)
    assert len(got) == len(expected) and meta["tokens"] == len(stream)
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))
    assert "tokenized" in " ".join(m for _, m in reporter.events)


def test_data_key_tracks_only_data_settings(make_config, make_spec):
    base = data_key(make_config())
    assert len(base) == 16 and base == data_key(make_config())
    assert data_key(make_config(learning_rate=3e-4, max_steps=7, warmup_steps=1)) == base
    assert data_key(make_config(mask_probability=0.3, whole_word_masking=True)) == base
    assert data_key(make_config(sequence_length=32)) != base
    changed = make_config().model_copy(update={"validation_fraction": 0.1})
    assert data_key(changed) != base
    # another architecture or objective frames rows differently
    gpt2 = make_spec(architecture="gpt2")
    assert data_key(parse_spec(gpt2)) != base
    assert data_key(parse_spec(make_spec(objective="mlm_nsp"))) != base


def test_stop_while_preparing(en_corpus, tmp_path, make_reporter, make_config):
    with pytest.raises(StopRequested):
        prepare_data(make_config(), str(en_corpus), "txt", str(tmp_path),
                     make_reporter(stop_after_logs=0))
    assert not (tmp_path / "meta.json").exists()


def test_run_refuses_data_of_other_settings(en_data, tmp_path, reporter, make_config):
    with pytest.raises(EngineError, match="prepared data"):
        run_pretraining(make_config(sequence_length=32), str(en_data), str(tmp_path), reporter)
    with pytest.raises(EngineError, match="meta.json missing"):
        run_pretraining(make_config(), str(tmp_path), str(tmp_path / "w"), reporter)
