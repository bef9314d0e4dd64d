"""Tokenize examples once, align word tags to sub-word pieces, and make padded batches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from jobspec.formats import number
from workers.engine.finetune.records import Example
from workers.engine.masking import IGNORE_INDEX


@dataclass
class Encoded:
    """A split as token ids and targets, plus what metrics need to score it per word."""

    input_ids: list[list[int]]
    # text classification: one label id per example; tagging: one id per piece, the tag on
    # each word's first piece and IGNORE_INDEX elsewhere (the Hugging Face convention);
    # regression: the number; multi-label: a 0/1 per label.
    targets: list[int] | list[list[int]] | list[float] | list[list[float]]
    # the labels / per-word tags / labels that apply as written in the data; the numbers
    gold: list[str] | list[list[str]] | list[float]
    # tagging only: per sentence, the word index of each labelled piece, in order.
    word_of_target: list[list[int]] | None = None
    truncated: int = 0  # examples cut at sequence_length
    # pairs: the second segment's ids (BERT's token_type_ids), where the model takes them
    token_type_ids: list[list[int]] | None = None
    problem: str = "single_label_classification"  # model_facts.PROBLEM_TYPES' values

    def __len__(self) -> int:
        return len(self.input_ids)

    def tokens(self) -> int:
        """Number of tokens (no padding) in the split."""
        return sum(len(ids) for ids in self.input_ids)


def encode_texts(examples: list[Example], tokenizer: PreTrainedTokenizerBase,
                 label_ids: dict[str, int], sequence_length: int,
                 problem: str = "single_label_classification") -> Encoded:
    """[CLS] text [SEP] (a pair in the model's own pair format: [CLS] a [SEP] b [SEP] with
    token_type_ids for BERT), cut to sequence_length tokens (pairs: the longer text first,
    as the pipeline's truncation=True does)."""
    texts = [str(e.inputs) for e in examples]
    pairs = [e.pair for e in examples]
    if any(p is not None for p in pairs):
        full = tokenizer(texts, [p or "" for p in pairs], truncation=True,
                         max_length=sequence_length, return_length=True)
    else:
        full = tokenizer(texts, truncation=True, max_length=sequence_length,
                         return_length=True)
    # Counted as cut when it fills the whole sequence: an upper bound that needs no second,
    # untruncated tokenization of long texts.
    truncated = sum(n >= sequence_length for n in full["length"])
    types = full.get("token_type_ids") if any(p is not None for p in pairs) else None
    targets: list[int] | list[float] | list[list[float]]
    gold: list[str] | list[list[str]] | list[float]
    if problem == "regression":
        gold = targets = [number(str(e.target)) for e in examples]
    elif problem == "multi_label_classification":
        gold = [list(e.target) for e in examples]
        targets = [[1.0 if label in set(e.target) else 0.0 for label in label_ids]
                   for e in examples]
    else:
        gold = [str(e.target) for e in examples]
        targets = [label_ids[label] for label in gold]
    return Encoded(full["input_ids"], targets, gold, truncated=truncated,
                   token_type_ids=types, problem=problem)


def spaced(words: str | list[str]) -> list[str]:
    """The words as running text splits them: each after the first with its leading space."""
    assert isinstance(words, list)  # tagging: a sentence's words
    return words[:1] + [" " + word for word in words[1:]]


def encode_tagged(examples: list[Example], tokenizer: PreTrainedTokenizerBase,
                  label_ids: dict[str, int], sequence_length: int) -> Encoded:
    """Words split into pieces; each word's tag on its first piece; long sentences cut.

    Every word but the first goes in with the space that precedes it in running text, so
    byte-level BPE (RoBERTa, GPT-2) gives it the same pieces as in pretraining ("Ġword", not
    "word"); WordPiece and Unigram tokenize it as they do running text either way.
    """
    encoding = tokenizer([spaced(e.inputs) for e in examples], is_split_into_words=True,
                         truncation=True, max_length=sequence_length)
    targets, word_of_target, truncated = [], [], 0
    for i, example in enumerate(examples):
        word_ids = encoding.word_ids(i)
        row, words, previous = [], [], None
        for word in word_ids:
            if word is not None and word != previous:
                row.append(label_ids[example.target[word]])
                words.append(word)
            else:  # special tokens and continuation pieces
                row.append(IGNORE_INDEX)
            previous = word
        # Words past the cut have no piece; a word of no pieces at all (control characters)
        # is rare and not counted as a cut.
        last = max((w for w in word_ids if w is not None), default=-1)
        truncated += last < len(example.inputs) - 1
        targets.append(row)
        word_of_target.append(words)
    tags = [list(e.target) for e in examples]
    return Encoded(encoding["input_ids"], targets, tags, word_of_target, truncated)


def most_frequent(encoded: Encoded) -> str:
    """The most common label or tag of a split (ties: first seen)."""
    flat: list[str] = []
    for gold in encoded.gold:
        if isinstance(gold, str):
            flat.append(gold)
        elif isinstance(gold, list) and encoded.word_of_target is not None:
            flat.extend(gold)
    common = Counter(flat).most_common(1)
    return common[0][0] if common else ""


def collate(encoded: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels of some examples, right-padded to the longest."""
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        input_ids[n, : len(row)] = torch.tensor(row)
        attention_mask[n, : len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for n, i in enumerate(indices):
            types[n, : len(encoded.token_type_ids[i])] = torch.tensor(encoded.token_type_ids[i])
        batch["token_type_ids"] = types
    if encoded.word_of_target is None and encoded.problem != "single_label_classification":
        labels = torch.tensor([encoded.targets[i] for i in indices], dtype=torch.float)
    elif encoded.word_of_target is None:
        labels = torch.tensor([encoded.targets[i] for i in indices])
    else:
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for n, i in enumerate(indices):
            piece_tags = encoded.targets[i]
            assert isinstance(piece_tags, list)  # tagging: a target per piece
            labels[n, : len(piece_tags)] = torch.tensor(piece_tags)
    return {**batch, "labels": labels}
