"""Packing into [CLS] ... [SEP] blocks, the validation split and the batch sampler."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from workers.engine.blocks import BlockSampler, encode_corpus, pack_blocks, split_blocks

CLS, SEP, PAD = 2, 3, 0


def test_pack_blocks_exact_length_no_padding():
    stream = np.arange(10, 10 + 100, dtype=np.uint16)
    blocks = pack_blocks(stream, 16, CLS, SEP)
    assert blocks.shape == (100 // 14, 16) and blocks.dtype == np.uint16
    assert (blocks[:, 0] == CLS).all() and (blocks[:, -1] == SEP).all()
    assert not (blocks == PAD).any()
    # the body is the stream in order; the ragged tail (100 % 14 tokens) is dropped
    assert np.array_equal(blocks[:, 1:-1].ravel(), stream[: 7 * 14])


def _word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "b": 6}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, sep_token="[SEP]", unk_token="[UNK]")


def test_encode_corpus_separates_documents():
    stream = encode_corpus(["a b", "b", "   ", "a a a"], _word_tokenizer(), docs_per_batch=2)
    assert stream.tolist() == [5, 6, SEP, 6, SEP, 5, 5, 5]  # no [SEP] for the empty doc
    assert stream.dtype == np.uint16


def test_split_holds_out_at_least_one_block_and_keeps_one():
    blocks = np.arange(200).reshape(100, 2)
    train, valid = split_blocks(blocks, 0.1)
    assert len(valid) == 10 and len(train) == 90
    assert sorted(train[:, 0].tolist() + valid[:, 0].tolist()) == blocks[:, 0].tolist()
    train, valid = split_blocks(blocks[:2], 0.0)
    assert len(train) == 1 and len(valid) == 1
    train, valid = split_blocks(blocks[:3], 0.5)
    assert len(train) >= 1 and len(valid) >= 1


def test_sampler_covers_each_epoch_and_is_seeded():
    sampler = BlockSampler(10, 4, seed=1)
    batches = [sampler.next_batch() for _ in range(5)]  # 20 indices = 2 epochs
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert sampler.state() == {"seed": 1, "epoch": 2, "position": 0}
    again = BlockSampler(10, 4, seed=1)
    assert all(np.array_equal(b, again.next_batch()) for b in batches)
    tiny = BlockSampler(3, 8, seed=0)  # batches larger than the training set still fill up
    assert len(tiny.next_batch()) == 8
