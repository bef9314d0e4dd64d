"""Train a BERT-style WordPiece tokenizer on the corpus and wrap it for transformers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece
from transformers import BertTokenizer

from workers.engine.config import TokenizerConfig

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4, in this order
CONTINUATION = "##"
# Share of the vocabulary the alphabet (characters and their ## forms) may take. Without a
# cap a CJK corpus' characters alone can exceed vocab_size; rarer ones become [UNK].
ALPHABET_SHARE = 0.75


def count_characters(documents: Iterable[str]) -> Counter[str]:
    """Raw character frequencies of the documents (a cheap streaming pass)."""
    counts: Counter[str] = Counter()
    for doc in documents:
        counts.update(doc)
    return counts


def _choose_alphabet(char_counts: Counter[str], raw: Tokenizer, budget: int
                     ) -> tuple[list[str], list[str]]:
    """Most frequent normalised characters first, plus '##c' for those that occur inside words.

    Done here rather than by the trainer because tokenizers (<= 0.23) picks the alphabet cut
    and numbers '##' tokens in hash-map order, so the same corpus could give a different
    vocabulary each run (huggingface/tokenizers#1794). Fixing both makes training repeatable.
    """
    normalized: Counter[str] = Counter()
    for char, n in char_counts.items():  # normalising per character equals per document
        for out in raw.normalizer.normalize_str(char):
            if not out.isspace():
                normalized[out] += n
    alphabet, continuing, used = [], [], 0
    for char, _ in sorted(normalized.items(), key=lambda kv: (-kv[1], kv[0])):
        # CJK characters and punctuation are always words of their own: no '##' form needed.
        words = raw.pre_tokenizer.pre_tokenize_str(raw.normalizer.normalize_str("a" + char))
        inside = len(words) == 1
        used += 2 if inside else 1
        if used > budget:
            break
        alphabet.append(char)
        if inside:
            continuing.append(CONTINUATION + char)
    return alphabet, sorted(continuing)


def train_tokenizer(
    documents: Iterable[str],
    char_counts: Counter[str],
    config: TokenizerConfig,
    model_max_length: int,
) -> BertTokenizer:
    """Train WordPiece on the documents; return a transformers BertTokenizer (fast backend)."""
    raw = Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
    # Same pipeline as transformers' BertTokenizer builds, so the wrapper below is exact.
    # handle_chinese_chars puts spaces around CJK characters: each one becomes its own word.
    raw.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet, continuing = _choose_alphabet(
        char_counts, raw, int(config.vocab_size * ALPHABET_SHARE)
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        # The '##' forms go in as special tokens only to get fixed ids during training; the
        # BertTokenizer below is built from the plain vocabulary, where they are ordinary.
        special_tokens=SPECIAL_TOKENS + continuing,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),  # exactly the chosen alphabet, nothing else
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,
    )
    raw.train_from_iterator(documents, trainer)
    # BertTokenizer adds the WordPiece decoder and the [CLS] $A [SEP] post-processor.
    # transformers 5 rebuilds a BertTokenizer from tokenizer.json's vocab plus the
    # tokenizer_config.json flags (do_lower_case, tokenize_chinese_chars, strip_accents), so we
    # construct it the same way here: what we train with is exactly what a reload gives.
    return BertTokenizer(
        vocab=raw.get_vocab(),
        do_lower_case=config.lowercase,
        tokenize_chinese_chars=True,
        strip_accents=None,
        unk_token=UNK,
        sep_token=SEP,
        pad_token=PAD,
        cls_token=CLS,
        mask_token=MASK,
        model_max_length=model_max_length,
    )
