"""BERT masking: proportions, special tokens, labels and determinism."""

from __future__ import annotations

import torch

from workers.engine.masking import IGNORE_INDEX, Masker

VOCAB, SPECIALS, MASK_ID = 1000, [0, 1, 2, 3, 4], 4


def make_batch(rows: int = 256, cols: int = 512) -> torch.Tensor:
    batch = torch.randint(5, VOCAB, (rows, cols), generator=torch.Generator().manual_seed(7))
    batch[:, 0], batch[:, -1] = 2, 3  # [CLS] ... [SEP]
    batch[:, cols // 3] = 3  # a document boundary inside each block
    return batch


def test_proportions_specials_and_labels():
    batch = make_batch()
    inputs, labels = Masker(VOCAB, SPECIALS, MASK_ID, 0.15)(batch, torch.Generator().manual_seed(0))
    special = torch.isin(batch, torch.tensor(SPECIALS))
    masked = labels != IGNORE_INDEX

    assert not masked[special].any()  # specials are never targets ...
    assert torch.equal(inputs[special], batch[special])  # ... nor corrupted
    assert torch.equal(labels[masked], batch[masked])  # labels hold the original token
    assert torch.equal(inputs[~masked], batch[~masked])  # nothing changes off-mask

    rate = masked.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.005
    n = masked.sum()
    to_mask = (inputs == MASK_ID) & masked
    replaced = (inputs != batch) & masked & ~to_mask
    kept = (inputs == batch) & masked
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIALS)).any()  # random = ordinary


def test_deterministic_given_generator_seed():
    batch = make_batch(32, 128)
    masker = Masker(VOCAB, SPECIALS, MASK_ID, 0.15)
    a = masker(batch, torch.Generator().manual_seed(3))
    b = masker(batch, torch.Generator().manual_seed(3))
    c = masker(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_at_least_one_masked_position():
    batch = make_batch(1, 8)
    masker = Masker(VOCAB, SPECIALS, MASK_ID, 1e-9)
    for seed in range(5):
        _, labels = masker(batch, torch.Generator().manual_seed(seed))
        assert (labels != IGNORE_INDEX).sum() == 1
        assert labels[0, 0] == IGNORE_INDEX and labels[0, -1] == IGNORE_INDEX


def test_whole_word_masking_masks_words_together_at_the_same_rate():
    batch = make_batch()
    continuation = list(range(500, VOCAB))  # ids >= 500 play the "##piece" tokens
    masker = Masker(VOCAB, SPECIALS, MASK_ID, 0.15, continuation_ids=continuation)
    inputs, labels = masker(batch, torch.Generator().manual_seed(0))
    masked = labels != IGNORE_INDEX
    special = torch.isin(batch, torch.tensor(SPECIALS))
    assert not masked[special].any()
    assert torch.equal(labels[masked], batch[masked])
    # A continuation piece is masked exactly when the piece before it is (inside a word).
    piece = (batch[:, 1:] >= 500) & ~special[:, :-1] & ~special[:, 1:]
    assert torch.equal(masked[:, 1:][piece], masked[:, :-1][piece])
    rate = masked.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.02
