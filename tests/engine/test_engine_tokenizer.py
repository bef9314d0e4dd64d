"""The trained tokenizers: exact reload through AutoTokenizer, special tokens per architecture,
repeatability, Chinese, whole-word continuations and transformers' pipelines."""

from __future__ import annotations

import unicodedata
from functools import cache
from pathlib import Path

import pytest
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    pipeline,
)

from jobspec.pretrain import TokenizerSpec
from workers.engine.corpus_reader import iter_documents
from workers.engine.failures import EngineError
from workers.engine.tokenizer import (
    count_characters,
    load_tokenizer,
    train_tokenizer,
    word_continuations,
)

TEXT = "Paris is the capital of France. 我爱北京 Héllo wörld [MASK] 1990"
# English, Chinese, accents, emoji, newlines, tabs, runs of spaces and a leading space.
SAMPLES = [
    TEXT,
    "中国的首都是北京。长城很长，黄河很黄！",
    " Naïve café — déjà vu 😀🚀\nsecond line\n\n\tthird  line with   spaces ",
    "The <mask> sat on the mat. <s> not special here </s>",
]
COMBOS = [(arch, kind) for arch in ("roberta", "gpt2", "llama") for kind in ("bpe", "unigram")]
MAX_LEN = 128


@cache
def _documents(path: Path, limit: int) -> tuple[str, ...]:
    """The first documents of a corpus slice, about limit characters in all."""
    docs, size = [], 0
    for doc in iter_documents(str(path), "txt"):
        docs.append(doc)
        size += len(doc)
        if size >= limit:
            break
    return tuple(docs)


def _train(path: Path, kind: str, architecture: str = "bert", vocab_size: int = 1000,
           lowercase: bool = False, limit: int = 300_000):
    docs = _documents(path, limit)
    spec = TokenizerSpec(type=kind, vocab_size=vocab_size, lowercase=lowercase)
    return train_tokenizer(docs, count_characters(docs), spec, architecture, MAX_LEN)


@cache
def _trained(path: Path, architecture: str, kind: str):
    """One tokenizer per combination, shared by the tests that only read it."""
    return _train(path, kind, architecture, limit=150_000)


def _reload(tok, directory: Path):
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


# --- wordpiece (bert) ---------------------------------------------------------------------

def test_save_and_autotokenizer_reload_agree(en_corpus, tmp_path):
    for lowercase in (True, False):
        tok = _train(en_corpus, "wordpiece", vocab_size=1000, lowercase=lowercase)
        again = _reload(tok, tmp_path / str(lowercase))
        assert type(again).__name__ == "BertTokenizer"
        assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
        assert again.all_special_tokens == tok.all_special_tokens
        assert (again.mask_token, again.mask_token_id) == ("[MASK]", tok.mask_token_id)
        assert len(again) == len(tok) <= 1000 and again.model_max_length == MAX_LEN
        ids = again("Paris is the capital of France.")["input_ids"]
        decoded = again.decode(ids, skip_special_tokens=True)
        sentence = "Paris is the capital of France."
        assert decoded == (sentence.lower() if lowercase else sentence)


def test_training_is_repeatable(en_corpus):
    # tokenizers' own trainer is not (huggingface/tokenizers#1794); ours pins the alphabet.
    first, second = (_train(en_corpus, "wordpiece").get_vocab() for _ in range(2))
    assert first == second


def test_chinese_characters_are_single_tokens(zh_corpus):
    tok = _train(zh_corpus, "wordpiece", vocab_size=2000)
    assert len(tok.tokenize("我爱北京")) == 4
    assert tok.tokenize("中国的首都") == ["中", "国", "的", "首", "都"]
    assert len(tok) <= 2000


# --- bpe and unigram: reload, special tokens ----------------------------------------------

@pytest.mark.parametrize(("architecture", "kind"), COMBOS)
def test_autotokenizer_reload_is_exact(en_corpus, tmp_path, architecture, kind):
    tok = _trained(en_corpus, architecture, kind)
    again = _reload(tok, tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast) and again.is_fast
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    for text in SAMPLES:
        ids = tok(text)["input_ids"]
        assert again(text)["input_ids"] == ids
        assert again.decode(ids) == tok.decode(ids)
        assert again(text, "and a pair")["input_ids"] == tok(text, "and a pair")["input_ids"]
    assert again.all_special_tokens == tok.all_special_tokens
    assert again.all_special_ids == tok.all_special_ids
    assert again.get_vocab() == tok.get_vocab() and len(again) <= 1000
    assert again.model_max_length == MAX_LEN
    assert again.model_input_names == ["input_ids", "attention_mask"]


def test_lowercase_survives_the_reload(en_corpus, tmp_path):
    for kind in ("bpe", "unigram"):
        tok = _train(en_corpus, kind, "roberta", lowercase=True, limit=100_000)
        again = _reload(tok, tmp_path / kind)
        assert again.tokenize("PARIS") == tok.tokenize("PARIS") == tok.tokenize("paris")


def _words(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text)["input_ids"])


def test_special_tokens_follow_the_architecture(en_corpus):
    roberta = _trained(en_corpus, "roberta", "bpe")
    assert roberta.convert_ids_to_tokens(range(5)) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (roberta.cls_token, roberta.bos_token, roberta.sep_token, roberta.eos_token) == (
        "<s>", "<s>", "</s>", "</s>")
    words = _words(roberta, "a b")
    assert words[0] == "<s>" and words[-1] == "</s>" and "<s>" not in words[1:-1]
    pair = roberta.convert_ids_to_tokens(roberta("a", "b")["input_ids"])
    assert pair == ["<s>", "a", "</s>", "</s>", "b", "</s>"]
    # The mask takes the space before it, as RoBERTa's: the next word keeps its own.
    assert _words(roberta, "is the <mask> of")[-4:-1] == ["Ġthe", "<mask>", "Ġof"]

    gpt2 = _trained(en_corpus, "gpt2", "bpe")
    assert gpt2.bos_token == gpt2.eos_token == gpt2.unk_token == "<|endoftext|>"
    assert gpt2.pad_token == "<pad>" and gpt2.pad_token_id != gpt2.eos_token_id
    assert _words(gpt2, "a b") == ["a", "Ġb"]
    assert _words(_trained(en_corpus, "gpt2", "unigram"), "a b") == ["▁a", "▁b"]

    for kind in ("bpe", "unigram"):
        llama = _trained(en_corpus, "llama", kind)
        assert llama.convert_ids_to_tokens(range(4)) == ["<unk>", "<s>", "</s>", "<pad>"]
        words = _words(llama, "a b")
        assert words[0] == "<s>" and "</s>" not in words

    for architecture, kind in COMBOS:
        tok = _trained(en_corpus, architecture, kind)
        assert tok.pad_token_id is not None and tok.eos_token_id is not None
        assert (tok.mask_token is not None) == (architecture == "roberta")


# --- repeatability, Chinese ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_bpe_and_unigram_training_is_repeatable(en_corpus, zh_corpus, kind):
    # Unigram's EM sums in hash-map order; the scores are canonicalised after training.
    for path, vocab_size in ((en_corpus, 1000), (zh_corpus, 1500)):
        first, second = (_train(path, kind, "llama", vocab_size, limit=100_000)
                         for _ in range(2))
        assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_chinese_is_covered_and_round_trips(zh_corpus, kind):
    # Room for the alphabet: the reviews' 200 KB hold ~2,200 distinct characters, and
    # ALPHABET_SHARE of 3,000 entries keeps them all.
    tok = _train(zh_corpus, kind, "llama", vocab_size=3000)
    assert len(tok) <= 3000
    sample = list(iter_documents(str(zh_corpus), "txt"))[-40:]
    ids = [i for doc in sample for i in tok(doc, add_special_tokens=False)["input_ids"]]
    assert ids.count(tok.unk_token_id) <= 0.001 * len(ids)
    chinese = [p for p in tok.convert_ids_to_tokens(sorted(set(ids)))
               if sum("\u4e00" <= c <= "\u9fff" for c in tok.convert_tokens_to_string([p])) >= 2]
    assert len(chinese) >= 20  # multi-character pieces, not one token per character
    # Byte-level BPE is lossless; Unigram gives back the NFKC form.
    expected = sample if kind == "bpe" else [unicodedata.normalize("NFKC", d) for d in sample]
    decoded = [tok.decode(tok(doc)["input_ids"], skip_special_tokens=True) for doc in sample]
    assert decoded == expected


# --- word continuations, load_tokenizer ---------------------------------------------------

def test_word_continuations(en_corpus):
    wordpiece = _train(en_corpus, "wordpiece", limit=100_000)
    cont = word_continuations(wordpiece)
    assert cont and all(p.startswith("##") for p in wordpiece.convert_ids_to_tokens(cont))
    for architecture, kind, marker in (("roberta", "bpe", "Ġ"), ("llama", "unigram", "▁")):
        tok = _trained(en_corpus, architecture, kind)
        cont = set(word_continuations(tok))
        pieces = tok.convert_ids_to_tokens(sorted(cont))
        assert pieces and not any(p.startswith(marker) for p in pieces)
        assert not cont & set(tok.all_special_ids)
        starts = set(tok.get_vocab().values()) - cont - set(tok.all_special_ids)
        assert all(p.startswith(marker) for p in tok.convert_ids_to_tokens(sorted(starts)))
        # In a long word, the pieces after the first are continuations.
        ids = tok(" extraordinarily", add_special_tokens=False)["input_ids"]
        assert len(ids) > 1 and ids[0] not in cont and set(ids[1:]) <= cont


def test_load_tokenizer(en_corpus, tmp_path):
    tok = _trained(en_corpus, "llama", "unigram")
    tok.save_pretrained(tmp_path / "ok")
    loaded = load_tokenizer(tmp_path / "ok")
    assert loaded.is_fast and loaded(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    # A tokenizer saved without a padding token (as GPT-2's) pads with its eos.
    gpt2 = _trained(en_corpus, "gpt2", "bpe")
    PreTrainedTokenizerFast(tokenizer_object=gpt2.backend_tokenizer, eos_token="<|endoftext|>"
                            ).save_pretrained(tmp_path / "nopad")
    nopad = load_tokenizer(tmp_path / "nopad")
    assert nopad.pad_token == "<|endoftext|>" and nopad.pad_token_id == gpt2.eos_token_id
    (tmp_path / "empty").mkdir()
    for missing in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(EngineError):
            load_tokenizer(missing)


# --- transformers pipelines on tiny random models -----------------------------------------

def _save_model(model, tok, directory: Path) -> str:
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_fill_mask_pipeline(en_corpus, tmp_path, kind):
    tok = _trained(en_corpus, "roberta", kind)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_LEN + 2, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    fill = pipeline("fill-mask", model=_save_model(RobertaForMaskedLM(config), tok, tmp_path))
    assert fill.tokenizer(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    results = fill("Paris is the <mask> of France.", top_k=3)
    assert len(results) == 3
    assert all(r["sequence"].startswith("Paris is the") for r in results)


@pytest.mark.parametrize(("architecture", "kind"),
                         [(a, k) for a, k in COMBOS if a != "roberta"])
def test_text_generation_pipeline(en_corpus, tmp_path, architecture, kind):
    tok = _trained(en_corpus, architecture, kind)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2,
                                           n_head=2, n_positions=MAX_LEN, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
            **ids))
    generate = pipeline("text-generation", model=_save_model(model, tok, tmp_path))
    assert generate.tokenizer(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    out = generate("The capital of France is", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The capital of France is")
