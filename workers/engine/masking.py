"""BERT masked-language-model corruption, vectorised over a batch."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label value cross-entropy skips


def continuation_ids(vocab: dict[str, int], prefix: str = "##") -> list[int]:
    """Ids of WordPiece pieces that continue a word (for whole-word masking)."""
    return sorted(i for token, i in vocab.items() if token.startswith(prefix) and token != prefix)


class Masker:
    """Applies BERT's 80/10/10 masking; randomness comes only from the generator passed in.

    With continuation_ids, whole words are masked: a word (a piece and the ## pieces after
    it) is chosen with mask_probability, so the share of masked tokens stays the same.
    """

    def __init__(self, vocab_size: int, special_ids: list[int], mask_token_id: int,
                 mask_probability: float, continuation_ids: list[int] | None = None) -> None:
        self.mask_token_id = mask_token_id
        self.mask_probability = mask_probability
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.is_continuation = None
        if continuation_ids is not None:
            self.is_continuation = torch.zeros(vocab_size, dtype=torch.bool)
            self.is_continuation[torch.tensor(continuation_ids, dtype=torch.long)] = True
        # Random replacements are drawn from ordinary tokens only, never [CLS]/[MASK]/...
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[self.special_ids] = True
        self.replacement_ids = torch.arange(vocab_size)[~is_special]

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (corrupted inputs, labels); labels are IGNORE_INDEX except at masked positions."""
        maskable = ~torch.isin(input_ids, self.special_ids)
        if self.is_continuation is None:
            prob = torch.where(maskable, self.mask_probability, 0.0)
            masked = torch.bernoulli(prob, generator=generator).bool()
        else:
            # One draw per position; each token uses the draw of its word's first piece.
            draws = torch.rand(input_ids.shape, generator=generator)
            starts = ~self.is_continuation[input_ids]
            positions = torch.arange(input_ids.shape[-1]).expand_as(input_ids)
            first = torch.cummax(torch.where(starts, positions, 0), dim=-1).values
            masked = maskable & (draws.gather(-1, first) < self.mask_probability)
        if not masked.any():
            # A batch with no target would give a NaN loss; force one (rare on short batches).
            candidates = maskable.flatten().nonzero().squeeze(1)
            if len(candidates) == 0:
                candidates = torch.arange(input_ids.numel())
            pick = torch.randint(len(candidates), (1,), generator=generator)
            masked.view(-1)[candidates[pick]] = True

        labels = torch.where(masked, input_ids, IGNORE_INDEX)
        inputs = input_ids.clone()
        # Of the masked positions: 80% -> [MASK], 10% -> random token, 10% left unchanged.
        to_mask = masked & (torch.rand(input_ids.shape, generator=generator) < 0.8)
        to_random = masked & ~to_mask & (torch.rand(input_ids.shape, generator=generator) < 0.5)
        inputs[to_mask] = self.mask_token_id
        picks = torch.randint(len(self.replacement_ids), (int(to_random.sum()),),
                              generator=generator)
        inputs[to_random] = self.replacement_ids[picks]
        return inputs, labels
