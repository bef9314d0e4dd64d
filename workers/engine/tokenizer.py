"""Train the model's tokenizer on the corpus (WordPiece, byte-level BPE or Unigram) and wrap it
for transformers, so that what the engine trains with is exactly what AutoTokenizer reloads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers.models import BPE, Unigram, WordPiece
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from jobspec.pretrain import TokenizerSpec
from workers.engine.failures import ConfigError, EngineError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4, in this order
CONTINUATION = "##"
# Share of the vocabulary the alphabet may take (WordPiece: characters and their ## forms;
# Unigram: characters). Without a cap a CJK corpus' characters alone can exceed vocab_size;
# rarer ones become the unknown token.
ALPHABET_SHARE = 0.75
BYTE_SPACE = "Ġ"  # how byte-level BPE writes a leading space
META_SPACE = "▁"  # how Unigram (SentencePiece) writes one
# Characters Unigram keeps even when the corpus (one document per line) never shows them, so
# multi-line text such as fine-tuning examples keeps its line breaks.
UNIGRAM_ALWAYS = (META_SPACE, "\n")
# Unigram scores are rounded to this many decimals: the trainer's sums run in hash-map order,
# so the last bits differ from run to run (see _canonical_unigram).
SCORE_DECIMALS = 6
# tokenizers' UnigramTrainer gives the characters EM dropped the model's lowest score plus
# this step times their rank, in hash-map order (UnigramTrainer::finalize).
FALLBACK_STEP = 0.0001


@dataclass(frozen=True)
class _Family:
    """Special tokens of an architecture family, in id order, and their roles."""

    tokens: tuple[str, ...]
    roles: dict[str, str]  # transformers' name (bos_token, ...) -> token


_ROBERTA = _Family(("<s>", "<pad>", "</s>", "<unk>", "<mask>"), {
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"})
# GPT-2 has no padding token; a dedicated one keeps padded positions apart from the
# <|endoftext|> the model learns to predict (collators drop pad_token_id from the labels).
_GPT2 = _Family(("<|endoftext|>", "<pad>"), {
    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    "pad_token": "<pad>"})
# Unigram maps unseen characters to its unk piece: for GPT-2 that must not be <|endoftext|>,
# or an unknown character would read as the end of a document.
_GPT2_UNIGRAM = _Family(_GPT2.tokens + ("<unk>",), {**_GPT2.roles, "unk_token": "<unk>"})
_LLAMA = _Family(("<unk>", "<s>", "</s>", "<pad>"), {
    "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
_KINDS = {"roberta": ("bpe", "unigram"), "gpt2": ("bpe", "unigram"),
          "llama": ("bpe", "unigram"), "bert": ("wordpiece",)}


def count_characters(documents: Iterable[str]) -> Counter[str]:
    """Raw character frequencies of the documents (a cheap streaming pass)."""
    counts: Counter[str] = Counter()
    for doc in documents:
        counts.update(doc)
    return counts


def train_tokenizer(
    documents: Iterable[str],
    char_counts: Counter[str],
    spec: TokenizerSpec,
    architecture: str,
    model_max_length: int,
) -> PreTrainedTokenizerBase:
    """Train spec.type on the documents (re-iterable) with the architecture's special tokens.

    bert: BertTokenizer; roberta, gpt2, llama: PreTrainedTokenizerFast over the trained
    tokenizers.Tokenizer. tokenizer(text) adds what the model expects: [CLS] A [SEP] (bert),
    <s> A </s> (roberta), nothing (gpt2), <s> A (llama, as Llama: a bos, no eos).
    """
    kind = spec.type
    if kind not in _KINDS.get(architecture, ()):
        raise ConfigError(f"cannot train a {kind} tokenizer for {architecture}")
    if kind == "wordpiece":
        return _train_wordpiece(documents, char_counts, spec, model_max_length)
    family = {"roberta": _ROBERTA, "gpt2": _GPT2, "llama": _LLAMA}[architecture]
    if kind == "bpe":
        raw = _train_bpe(documents, spec, family)
    else:
        family = _GPT2_UNIGRAM if family is _GPT2 else family
        raw = _train_unigram(documents, char_counts, spec, family)
    raw.post_processor = _post_processor(architecture, kind, family)
    # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) saves tokenizer.json as
    # is and AutoTokenizer reloads it as is, normaliser and post-processor included.
    # RobertaTokenizer, GPT2Tokenizer and LlamaTokenizer would rebuild the pipeline from the
    # vocabulary and their own fixed settings, losing lowercasing and Unigram.
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        **family.roles,
        model_max_length=model_max_length,
        # Byte-level BPE decodes to exactly the input; no clean-up of spaces before dots.
        clean_up_tokenization_spaces=False,
        # No token_type_ids: RoBERTa has one type; GPT-2 would add them as token embeddings.
        model_input_names=["input_ids", "attention_mask"],
    )


def _train_wordpiece(documents: Iterable[str], char_counts: Counter[str], spec: TokenizerSpec,
                     model_max_length: int) -> BertTokenizer:
    """BERT's WordPiece, with the alphabet pinned so that training is repeatable."""
    raw = Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
    # Same pipeline as transformers' BertTokenizer builds, so the wrapper below is exact.
    # handle_chinese_chars puts spaces around CJK characters: each one becomes its own word.
    raw.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=bool(spec.lowercase),
    )
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet, continuing = _wordpiece_alphabet(
        char_counts, raw, int(spec.vocab_size * ALPHABET_SHARE)
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_size,
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
        do_lower_case=bool(spec.lowercase),
        tokenize_chinese_chars=True,
        strip_accents=None,
        unk_token=UNK,
        sep_token=SEP,
        pad_token=PAD,
        cls_token=CLS,
        mask_token=MASK,
        model_max_length=model_max_length,
    )


def _normalized_counts(char_counts: Counter[str], raw: Tokenizer) -> Counter[str]:
    """Character frequencies after the tokenizer's normaliser, whitespace left out."""
    normalized: Counter[str] = Counter()
    for char, n in char_counts.items():
        for out in raw.normalizer.normalize_str(char):
            if not out.isspace():
                normalized[out] += n
    return normalized


def _by_frequency(counts: Counter[str]) -> list[str]:
    """Most frequent first; ties by character, so the order does not depend on hashing."""
    return [char for char, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _wordpiece_alphabet(char_counts: Counter[str], raw: Tokenizer, budget: int
                        ) -> tuple[list[str], list[str]]:
    """Most frequent normalised characters first, plus '##c' for those that occur inside words.

    Done here rather than by the trainer because tokenizers (<= 0.23) picks the alphabet cut
    and numbers '##' tokens in hash-map order, so the same corpus could give a different
    vocabulary each run (huggingface/tokenizers#1794). Fixing both makes training repeatable.
    (Per character normalising equals per document for BertNormalizer.)
    """
    alphabet, continuing, used = [], [], 0
    for char in _by_frequency(_normalized_counts(char_counts, raw)):
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


def _special_tokens(family: _Family) -> list[AddedToken]:
    """The family's special tokens for a trainer (which gives them ids 0, 1, ... in order)."""
    # <mask> swallows the space before it, as RoBERTa's: in "the <mask> of" the model
    # predicts the word with its leading space, like the other words of the sentence.
    return [AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>")
            for t in family.tokens]


def _train_bpe(documents: Iterable[str], spec: TokenizerSpec, family: _Family) -> Tokenizer:
    """Byte-level BPE as GPT-2's and RoBERTa's: any UTF-8 text, no unknown tokens."""
    raw = Tokenizer(BPE())
    if spec.lowercase:
        raw.normalizer = normalizers.Lowercase()
    # add_prefix_space=False as the originals: a text's first word has no leading space.
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=_special_tokens(family),
        # All 256 bytes, seen or not. No limit_alphabet: with one the trainer cuts the
        # alphabet in hash-map order (huggingface/tokenizers#1794); without, it numbers the
        # characters in code-point order and breaks ties between merges by pair, so the
        # vocabulary and merges come out the same on every run.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(documents, trainer)
    return raw


def _unigram_alphabet(char_counts: Counter[str], raw: Tokenizer, budget: int) -> list[str]:
    """UNIGRAM_ALWAYS, then the most frequent normalised characters, budget in all."""
    frequent = [c for c in _by_frequency(_normalized_counts(char_counts, raw))
                if c not in UNIGRAM_ALWAYS]
    return list(UNIGRAM_ALWAYS) + frequent[:max(budget - len(UNIGRAM_ALWAYS), 0)]


def _train_unigram(documents: Iterable[str], char_counts: Counter[str], spec: TokenizerSpec,
                   family: _Family) -> Tokenizer:
    """Unigram as SentencePiece's: NFKC, spaces as '▁' parts of pieces, an unk piece."""
    raw = Tokenizer(Unigram())
    nfkc = normalizers.NFKC()
    raw.normalizer = normalizers.Sequence([nfkc, normalizers.Lowercase()]) if spec.lowercase \
        else nfkc
    # Splits at spaces only; a Chinese run without spaces is one word, segmented by the model.
    # "first": a '▁' before the text, as SentencePiece's dummy prefix (not after specials).
    metaspace = pre_tokenizers.Metaspace(replacement=META_SPACE, prepend_scheme="first")
    raw.decoder = decoders.Metaspace(replacement=META_SPACE, prepend_scheme="first")
    alphabet = _unigram_alphabet(char_counts, raw, int(spec.vocab_size * ALPHABET_SHARE))
    # The trainer keeps every character it sees and fails when they do not fit the
    # vocabulary: for training only, characters outside the alphabet are cut out (and split
    # the word there, as the unk piece they become does).
    outside = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in alphabet) + "]"
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [metaspace, pre_tokenizers.Split(Regex(outside), behavior="removed")]
    )
    unk = family.roles["unk_token"]
    trainer = trainers.UnigramTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=_special_tokens(family),
        unk_token=unk,
        initial_alphabet=list(UNIGRAM_ALWAYS),
        show_progress=False,
    )
    raw.train_from_iterator(documents, trainer)
    raw.pre_tokenizer = metaspace
    raw.model = _canonical_unigram(raw, char_counts, len(family.tokens),
                                   family.tokens.index(unk))
    return raw


def _canonical_unigram(raw: Tokenizer, char_counts: Counter[str], n_special: int,
                       unk_id: int) -> Unigram:
    """The trained model with the run-to-run noise of tokenizers' UnigramTrainer removed.

    The trainer's EM sums over words in hash-map order, so scores differ in their last bits
    between runs; and characters EM dropped come back with scores min + k * 0.0001, k in
    hash-map order. Here those characters are ranked by frequency instead, scores rounded and
    pieces numbered by (score, piece): the same corpus gives the same model every time. (The
    set of pieces itself is not pinned; it came out the same in every run we measured.)
    """
    vocab = [(piece, score) for piece, score in json.loads(raw.to_str())["model"]["vocab"]]
    specials, pieces = vocab[:n_special], vocab[n_special:]
    scores = dict(pieces)
    lowest = min(scores.values(), default=0.0)
    # Matched with a tolerance: characters tied with the lowest score differ in their last bits
    # too, so which of them equal it exactly varies; all of them are re-ranked alike.
    fallback = [p for p, s in pieces if len(p) == 1 and _on_step(s - lowest)]
    ranked = sorted(fallback, key=lambda c: (char_counts.get(c, 0), c))  # rarest lowest
    for rank, piece in enumerate(ranked):
        scores[piece] = lowest + rank * FALLBACK_STEP
    ordered = sorted(((p, round(s, SCORE_DECIMALS)) for p, s in scores.items()),
                     key=lambda ps: (-ps[1], ps[0]))
    return Unigram(specials + ordered, unk_id, False)


def _on_step(offset: float) -> bool:
    """Whether offset is a whole number of FALLBACK_STEPs (to well below rounding)."""
    steps = round(offset / FALLBACK_STEP)
    return abs(offset - steps * FALLBACK_STEP) < 1e-9


def _post_processor(architecture: str, kind: str, family: _Family) -> processors.PostProcessor:
    """What tokenizer(text) adds around a text (and a pair) for this architecture."""
    ids = {t: i for i, t in enumerate(family.tokens)}
    if architecture == "roberta":
        single, pair = "<s> $A </s>", "<s> $A </s> </s> $B </s>"
    elif architecture == "llama":
        single, pair = "<s> $A", "<s> $A <s> $B"
    else:
        single, pair = "$A", "$A $B"
    specials = [(t, ids[t]) for t in ("<s>", "</s>") if t in single]
    # Token types stay 0 throughout (RoBERTa has one type); they are not returned anyway.
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    if kind != "bpe":
        return template
    # Byte-level: offsets leave out the leading space ('Ġ'), as RobertaProcessing's do.
    return processors.Sequence([processors.ByteLevel(trim_offsets=True), template])


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer saved in directory, with a padding token.

    A tokenizer with an eos but no pad token (as GPT-2's) pads with eos: pad_token = eos_token.
    Raises EngineError when it cannot be loaded, is not a fast one or has neither.
    """
    path = Path(directory)
    if not path.is_dir():
        raise EngineError(f"no tokenizer found: {path} is not a directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise EngineError(f"the tokenizer in {path.name} cannot be loaded: {exc}") from exc
    if not tokenizer.is_fast:
        raise EngineError(f"the tokenizer in {path.name} is not a fast (tokenizers) one; "
                          "save it with its tokenizer.json")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise EngineError(f"the tokenizer in {path.name} has no padding token and no "
                              "end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def word_continuations(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the pieces that continue a word rather than start one (whole-word masking).

    WordPiece: pieces starting with '##'. SentencePiece-style (Unigram, Metaspace BPE): pieces
    not starting with '▁'. Byte-level BPE: pieces not starting with 'Ġ', an approximation:
    punctuation after a word, a text's first word and the pieces after the first of a CJK run
    (written without spaces) count as continuations too. Special tokens never do.
    """
    backend = tokenizer.backend_tokenizer
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    if isinstance(backend.model, WordPiece):
        prefix = backend.model.continuing_subword_prefix
        return sorted(i for p, i in vocab.items() if p.startswith(prefix) and i not in special)
    marker = META_SPACE if _uses_metaspace(backend) else BYTE_SPACE
    return sorted(i for p, i in vocab.items() if not p.startswith(marker) and i not in special)


def _uses_metaspace(backend: Tokenizer) -> bool:
    """Whether spaces are written '▁' (SentencePiece style) rather than 'Ġ' (byte-level)."""
    config = json.loads(backend.to_str())
    parts = (config.get(k) for k in ("normalizer", "pre_tokenizer", "decoder"))
    return any(META_SPACE in json.dumps(part, ensure_ascii=False) for part in parts if part)
