"""Packing into [CLS] ... [SEP] blocks, sharded block reads and the batch sampler."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from workers.engine.blocks import BlockPacker, BlockSampler, ShardedBlocks, encode_batches

CLS, SEP, PAD = 2, 3, 0


def test_packer_exact_length_no_padding_across_pieces():
    stream = np.arange(10, 10 + 100, dtype=np.uint16)
    packer = BlockPacker(16, np.dtype(np.uint16), CLS, SEP)
    blocks = np.concatenate([packer.add(piece) for piece in np.split(stream, [5, 33, 34, 90])])
    assert blocks.shape == (100 // 14, 16) and blocks.dtype == np.uint16
    assert (blocks[:, 0] == CLS).all() and (blocks[:, -1] == SEP).all()
    assert not (blocks == PAD).any()
    # the body is the stream in order; the ragged tail (100 % 14 tokens) is left over
    assert np.array_equal(blocks[:, 1:-1].ravel(), stream[: 7 * 14])
    assert packer.tokens == 100 and len(packer.rest) == 100 % 14


def _word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "b": 6}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, sep_token="[SEP]", unk_token="[UNK]")


def test_encode_batches_separates_documents():
    pieces = list(encode_batches(["a b", "b", "   ", "a a a"], _word_tokenizer(), SEP,
                                 docs_per_batch=2))
    stream = np.concatenate(pieces)
    assert stream.tolist() == [5, 6, SEP, 6, SEP, 5, 5, 5]  # no [SEP] for the empty doc
    assert stream.dtype == np.uint16


def test_sharded_blocks_take_in_order(tmp_path):
    rows = np.arange(30, dtype=np.uint16).reshape(10, 3)
    paths = []
    for i, (start, stop) in enumerate([(0, 4), (4, 5), (5, 10)]):
        paths.append(tmp_path / f"s{i}.npy")
        np.save(paths[-1], rows[start:stop])
    blocks = ShardedBlocks(paths)
    assert len(blocks) == 10 and blocks.sizes == [4, 1, 5]
    picks = np.array([9, 0, 4, 3, 5, 9])
    taken = blocks.take(picks)
    assert taken.dtype == np.int64 and np.array_equal(taken, rows[picks])


def test_sampler_covers_each_epoch_and_is_seeded():
    sampler = BlockSampler([4, 1, 5], 4, seed=1)
    batches = [sampler.next_batch() for _ in range(5)]  # 20 indices = 2 epochs
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:])  # a new order each epoch
    assert sampler.state() == {"seed": 1, "epoch": 2, "position": 0}
    again = BlockSampler([4, 1, 5], 4, seed=1)
    assert all(np.array_equal(b, again.next_batch()) for b in batches)
    tiny = BlockSampler([3], 8, seed=0)  # batches larger than the training set still fill up
    assert len(tiny.next_batch()) == 8


def test_sampler_resumes_from_its_state_without_replay():
    straight = BlockSampler([7, 6], 5, seed=3)
    expected = [straight.next_batch() for _ in range(9)]
    first = BlockSampler([7, 6], 5, seed=3)
    for _ in range(4):
        first.next_batch()
    state = first.state()
    resumed = BlockSampler([7, 6], 5, seed=3, epoch=state["epoch"], position=state["position"])
    assert all(np.array_equal(b, resumed.next_batch()) for b in expected[4:])


def test_encode_batches_reads_whole_documents_whatever_tokenizer_json_truncates():
    """all-MiniLM-L6-v2's tokenizer.json truncates at 128 tokens and pads: continued
    pretraining read only each document's first 128 tokens (2% of the bench's corpus)."""
    tokenizer = _word_tokenizer()
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    tokenizer.backend_tokenizer.enable_padding(pad_id=PAD, length=3)
    stream = np.concatenate(list(encode_batches(["a b a b a", "b"], tokenizer, SEP)))
    assert stream.tolist() == [5, 6, 5, 6, 5, SEP, 6]
    assert tokenizer.backend_tokenizer.truncation is not None  # the model's own is untouched
