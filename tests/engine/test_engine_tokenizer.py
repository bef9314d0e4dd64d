"""The trained tokenizer: reload through AutoTokenizer, CJK handling, repeatability."""

from __future__ import annotations

from transformers import AutoTokenizer

from workers.engine.config import TokenizerConfig
from workers.engine.corpus import iter_documents
from workers.engine.tokenizer import count_characters, train_tokenizer

TEXT = "Paris is the capital of France. 我爱北京 Héllo wörld [MASK] 1990"


def _train(path, **kwargs):
    docs = list(iter_documents(str(path), "txt"))
    return train_tokenizer(docs, count_characters(docs), TokenizerConfig(**kwargs), 128)


def test_save_and_autotokenizer_reload_agree(en_corpus, tmp_path):
    for lowercase in (True, False):
        tok = _train(en_corpus, vocab_size=1000, lowercase=lowercase)
        tok.save_pretrained(tmp_path / str(lowercase))
        again = AutoTokenizer.from_pretrained(tmp_path / str(lowercase))
        assert type(again).__name__ == "BertTokenizer"
        assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
        assert again.all_special_tokens == tok.all_special_tokens
        assert (again.mask_token, again.mask_token_id) == ("[MASK]", tok.mask_token_id)
        assert len(again) == len(tok) <= 1000 and again.model_max_length == 128
        ids = again("Paris is the capital of France.")["input_ids"]
        decoded = again.decode(ids, skip_special_tokens=True)
        sentence = "Paris is the capital of France."
        assert decoded == (sentence.lower() if lowercase else sentence)


def test_training_is_repeatable(en_corpus):
    # tokenizers' own trainer is not (huggingface/tokenizers#1794); ours pins the alphabet.
    first, second = (_train(en_corpus, vocab_size=1000).get_vocab() for _ in range(2))
    assert first == second


def test_chinese_characters_are_single_tokens(zh_corpus):
    tok = _train(zh_corpus, vocab_size=2000)
    assert len(tok.tokenize("我爱北京")) == 4
    assert tok.tokenize("中国的首都") == ["中", "国", "的", "首", "都"]
    assert len(tok) <= 2000
