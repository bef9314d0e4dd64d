"""Building on base models without a head, as people bring them (issue 21): a directory saved
from BertModel (weights named with or without the "bert." prefix, the pooler included), the
same in the sentence-transformers layout (modules.json, 1_Pooling/config.json), GPT2Model
and LlamaModel. Continued pretraining gets the objective's head (BERT's transform new, the
decoder tied to the input embeddings as the config says), its first eval at step 0, and
lowers the loss; fine-tuning (LoRA too) lowers it too; every encoder's export says it
serves embeddings (mean pooling) and carries the sentence-transformers files.
Tiny models (hidden 32, one layer), built in place: seconds each."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerBase,
    pipeline,
)

from jobspec import FinetuneSpec, TokenizerSpec, parse_spec
from jobspec.pooling import read_pooling
from workers.engine import prepare_data, run_pretraining
from workers.engine.architectures import load_model
from workers.engine.corpus_reader import iter_documents
from workers.engine.finetune import run_finetune
from workers.engine.tokenizer import count_characters, train_tokenizer

SHAPE = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "positions": 128}
ST_MODULES = [  # as sentence-transformers saves all-MiniLM-L6-v2
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize",
     "type": "sentence_transformers.models.Normalize"}]


def _tokenizer(corpus: Path, kind: str, architecture: str) -> PreTrainedTokenizerBase:
    docs = list(iter_documents(str(corpus), "txt"))
    spec = TokenizerSpec(type=kind, vocab_size=2000, lowercase=kind == "wordpiece")
    return train_tokenizer(docs, count_characters(docs), spec, architecture, 512)


@pytest.fixture(scope="module")
def wordpiece(en_corpus) -> PreTrainedTokenizerBase:
    return _tokenizer(en_corpus, "wordpiece", "bert")


@pytest.fixture(scope="module")
def bpe(en_corpus) -> PreTrainedTokenizerBase:
    return _tokenizer(en_corpus, "bpe", "gpt2")


def save_base_bert(tokenizer: PreTrainedTokenizerBase, out: Path, layout: str = "plain") -> str:
    """A BertModel directory (random weights, seed 0) as save_pretrained writes it:
    "plain" (weights named "embeddings.word_embeddings.weight", ..., the pooler included,
    as sentence-transformers checkpoints store them), "prefixed" (named "bert.embeddings..."),
    or "sentence-transformers" (plain plus modules.json, 1_Pooling/config.json with mean
    pooling, a Normalize module and sentence_bert_config.json)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=SHAPE["hidden"],
                        num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                        intermediate_size=SHAPE["intermediate"],
                        max_position_embeddings=SHAPE["positions"],
                        pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if layout == "prefixed":
        weights = load_file(str(out / "model.safetensors"))
        save_file({f"bert.{k}": v for k, v in weights.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    elif layout == "sentence-transformers":
        (out / "modules.json").write_text(json.dumps(ST_MODULES, indent=2))
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": SHAPE["hidden"], "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}))
        (out / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": 64, "do_lower_case": False}))
    return str(out)


def save_base_decoder(tokenizer: PreTrainedTokenizerBase, out: Path, architecture: str) -> str:
    """A GPT2Model or LlamaModel directory (random weights, seed 0), each with its
    config's default tying (GPT-2: tied; Llama: not)."""
    torch.manual_seed(0)
    common = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id}
    if architecture == "gpt2":
        model: Any = GPT2Model(GPT2Config(n_embd=SHAPE["hidden"], n_layer=SHAPE["layers"],
                                          n_head=SHAPE["heads"], n_positions=SHAPE["positions"],
                                          **common))
    else:
        model = LlamaModel(LlamaConfig(hidden_size=SHAPE["hidden"],
                                       num_hidden_layers=SHAPE["layers"],
                                       num_attention_heads=SHAPE["heads"],
                                       intermediate_size=SHAPE["intermediate"],
                                       max_position_embeddings=SHAPE["positions"], **common))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def base_bert(wordpiece, tmp_path_factory) -> str:
    return save_base_bert(wordpiece, tmp_path_factory.mktemp("base-bert"))


@pytest.fixture(scope="module")
def base_st(wordpiece, tmp_path_factory) -> str:
    return save_base_bert(wordpiece, tmp_path_factory.mktemp("base-st"),
                          "sentence-transformers")


@pytest.fixture(scope="module")
def base_gpt2(bpe, tmp_path_factory) -> str:
    return save_base_decoder(bpe, tmp_path_factory.mktemp("base-gpt2"), "gpt2")


# -- Loading: the head each objective needs, on the base's weights


@pytest.mark.parametrize("layout", ["plain", "prefixed", "sentence-transformers"])
def test_a_base_encoder_gets_an_mlm_head_tied_to_its_embeddings(wordpiece, tmp_path, layout):
    base = save_base_bert(wordpiece, tmp_path / layout, layout)
    model, notes = load_model(base, "mlm", attention="eager", dropout=0.0, seed=0)
    encoder = AutoModel.from_pretrained(base)  # BertModel, as the base was saved
    assert type(model).__name__ == "BertForMaskedLM"
    ours = model.bert.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in encoder.state_dict().items()
               if not k.startswith("pooler.")), "the base's weights were not all loaded"
    # BERT's config ties by default: the decoder is the input embeddings, its bias the
    # head's; nothing frozen (an untied head's orphan bias is what freeze_unused freezes).
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias and head.bias.requires_grad
    assert all(p.requires_grad for p in model.parameters())
    said = "\n".join(notes)
    assert "cls.predictions.transform" in said and "initialised" in said, notes
    assert "cls.predictions.decoder is tied to the input embeddings" in said, notes
    assert "pooler.dense" in said, notes  # the base's pooler: no place for it in an MLM
    # The seed decides the new head: the same in every process of a multi-process job.
    again, _ = load_model(base, "mlm", attention="eager", dropout=0.0, seed=0)
    assert torch.equal(again.cls.predictions.transform.dense.weight, head.transform.dense.weight)
    other, _ = load_model(base, "mlm", attention="eager", dropout=0.0, seed=1)
    assert not torch.equal(other.cls.predictions.transform.dense.weight,
                           head.transform.dense.weight)


def test_base_decoders_get_an_lm_head(bpe, base_gpt2, tmp_path):
    gpt2, notes = load_model(base_gpt2, "clm", attention="eager", dropout=0.0)
    assert type(gpt2).__name__ == "GPT2LMHeadModel"
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    assert not any("initialised" in n for n in notes) and \
        "the output layer lm_head is tied to the input embeddings" in notes, notes
    # LlamaConfig does not tie by default: its LM head is new, and the events say so.
    llama_dir = save_base_decoder(bpe, tmp_path / "llama", "llama")
    llama, notes = load_model(llama_dir, "clm", attention="eager", dropout=0.0)
    assert type(llama).__name__ == "LlamaForCausalLM"
    assert llama.lm_head.weight is not llama.model.embed_tokens.weight
    assert any("initialised" in n and "lm_head" in n for n in notes), notes
    assert any("lm_head has its own weights" in n for n in notes), notes
    base = AutoModel.from_pretrained(llama_dir).state_dict()
    assert all(torch.equal(llama.model.state_dict()[k], v) for k, v in base.items())


# -- Continued pretraining


def _continue(corpus: Path, base: str, out: Path, reporter, *, architecture: str,
              data: Path | None = None, **hp: Any):
    """A continued-pretraining run from `base` (data prepared once into `data`, reused
    when it is there already)."""
    from tests.engine.conftest import tiny_spec

    raw = tiny_spec(architecture=architecture, max_steps=30, **{"learning_rate": 5e-3, **hp})
    raw.update(base_model_id="m_base", tokenizer={"type": "from_model"}, eval_every=10,
               checkpoint_every=30)
    spec = parse_spec(raw)
    data = data or out / "data"
    if not (data / "meta.json").exists():
        prepare_data(spec, str(corpus), "txt", str(data), reporter, base)
    return run_pretraining(spec, str(data), str(out / "run"), reporter, base_model_dir=base)


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory) -> Path:
    """Token shards of the English slice in the base BERTs' tokenizer (they share it)."""
    return tmp_path_factory.mktemp("bert-data") / "data"


def _embeds_like_mean_pooling(export: str, normalize: bool = False) -> None:
    """The export's sentence-transformers files say mean pooling (normalised when its base's
    said so), and SentenceTransformer(export) embeds as the mean of the last hidden states."""
    pooling = read_pooling(export)
    assert pooling.from_files and pooling.modes == ["mean"] and pooling.normalize == normalize
    from sentence_transformers import SentenceTransformer

    texts = ["the state of the union is strong.", "we the people"]
    vectors = SentenceTransformer(export, device="cpu").encode(texts, convert_to_tensor=True)
    tokenizer = AutoTokenizer.from_pretrained(export)
    encoder = AutoModel.from_pretrained(export).eval()
    for text, vector in zip(texts, vectors, strict=True):
        with torch.no_grad():
            hidden = encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        want = hidden.mean(dim=0)
        if normalize:
            want = torch.nn.functional.normalize(want, dim=0)
        assert torch.allclose(vector, want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["plain", "sentence-transformers"])
def test_continued_mlm_from_a_base_encoder(en_corpus, bert_data, base_bert, base_st, tmp_path,
                                           make_reporter, layout):
    base = base_bert if layout == "plain" else base_st
    reporter = make_reporter()
    result = _continue(en_corpus, base, tmp_path, reporter, architecture="bert", data=bert_data)
    assert not result.stopped and result.steps == 30
    evals = reporter.evals
    # The first eval, before any step: where the base (with its new head) stands.
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5, evals
    said = [m for _, m in reporter.events]
    assert any("continuing the base model" in m and "BertForMaskedLM" in m for m in said)
    assert any("cls.predictions.transform" in m and "initialised" in m for m in said), said
    assert any("tied to the input embeddings" in m for m in said), said

    export = result.export_dir
    config = json.loads((Path(export) / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["tie_word_embeddings"]
    mlm = AutoModelForMaskedLM.from_pretrained(export)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    answers = pipeline("fill-mask", model=export, device="cpu")("the [MASK] of the union.")
    assert len(answers) == 5
    card = (Path(export) / "README.md").read_text()
    assert "## Embeddings" in card and "/v1/embeddings" in card and "mean" in card
    assert "continued from model `m_base`" in card
    # a sentence-transformers base keeps its pooling (Normalize, max_seq_length) in the export
    _embeds_like_mean_pooling(export, normalize=layout != "plain")
    if layout != "plain":
        assert read_pooling(export).max_seq_length == 64
        assert "normalised to unit length" in card and "cut at 64 tokens" in card


@pytest.mark.slow
def test_continued_clm_from_a_base_decoder(en_corpus, base_gpt2, tmp_path, make_reporter):
    reporter = make_reporter()
    result = _continue(en_corpus, base_gpt2, tmp_path, reporter, architecture="gpt2")
    evals = reporter.evals
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5, evals
    said = [m for _, m in reporter.events]
    assert any("GPT2LMHeadModel" in m and "continuing the base model" in m for m in said)
    export = result.export_dir
    out = pipeline("text-generation", model=export, device="cpu")(
        "The king said", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("The king said")
    # A causal LM: no embeddings section, no sentence-transformers files.
    assert "## Embeddings" not in (Path(export) / "README.md").read_text()
    assert not (Path(export) / "modules.json").exists()


# -- Fine-tuning


def topic_records(corpus_text: str, n: int = 600) -> list[dict[str, Any]]:
    """A labelled set a tiny random encoder learns in tens of steps, fully or with LoRA,
    whatever its random weights: 3-8 random words of the corpus with "peace" or "war"
    put in three times, labelled by it; 5/6 train, the rest valid (the records' split)."""
    rng = random.Random(0)
    words = corpus_text.split()[:5000]
    records = []
    for i in range(n):
        label = rng.choice(["peace", "war"])
        text = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        for _ in range(3):
            text.insert(rng.randint(0, len(text)), label)
        records.append({"text": " ".join(text), "label": label,
                        "split": "train" if i < n * 5 // 6 else "valid"})
    return records


@pytest.fixture(scope="module")
def topics(en_corpus, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("topics") / "topics.jsonl"
    records = topic_records(en_corpus.read_text(encoding="utf-8"))
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(out)


# Full fine-tuning, and LoRA (rank 8, a higher rate as adapters take), from a random tiny
# encoder: both learn the topics within 40 steps.
FINETUNE_HP = {"full": {"learning_rate": 1e-2},
               "lora": {"learning_rate": 2e-2}}
LORA = {"type": "lora", "r": 8, "alpha": 16}


def _finetune_spec(task: str, **overrides: Any) -> FinetuneSpec:
    hp = {"max_steps": 40, "batch_size": 16, "learning_rate": 1e-2, "sequence_length": 64,
          **overrides.pop("hyperparameters", {})}
    return FinetuneSpec.model_validate({
        "type": "finetune", "task": task, "hyperparameters": hp, "log_every": 1,
        "eval_every": 10, "checkpoint_every": 40, "base_model_id": "m_base",
        "dataset_id": "ds_data", **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("how", ["full", "lora"])
def test_finetune_from_a_base_encoder(base_st, topics, tmp_path, make_reporter, how):
    reporter = make_reporter()
    spec = _finetune_spec("text_classification", hyperparameters=FINETUNE_HP[how],
                          **({"adapter": LORA} if how == "lora" else {}))
    result = run_finetune(spec, base_st, {"train": (topics, "jsonl")}, str(tmp_path), reporter,
                          device="cpu")
    assert not result.stopped and result.labels == ["peace", "war"]
    evals = reporter.evals
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    # From the untrained head's ~ln 2 at step 1 (the labels come half and half) down.
    first = reporter.logs[0]
    assert first["step"] == 1 and first["train_loss"] > 0.6, first
    assert evals[-1]["eval_loss"] < first["train_loss"] - 0.4, evals
    assert evals[-1]["accuracy"] > 0.9, evals
    # The base's pooler is BertForSequenceClassification's: only the classifier is new.
    said = [m for _, m in reporter.events]
    assert any("new head: classifier" in m and "unused base weights" not in m
               for m in said), said
    if how == "lora":
        assert 0 < result.trainable_parameters < result.num_parameters / 2
    export = result.export_dir
    answer = pipeline("text-classification", model=export, device="cpu")("war was declared")
    assert answer[0]["label"] == "war"
    card = (Path(export) / "README.md").read_text()
    assert "## Embeddings" in card and "tags: [cloze, bert, sentence-transformers]" in card
    _embeds_like_mean_pooling(export, normalize=True)  # the sentence-transformers base's


@pytest.mark.slow
def test_token_classification_from_a_base_encoder(base_bert, tmp_path, make_reporter):
    names, places = ["alice", "bob", "carol", "dave"], ["paris", "rome", "oslo", "lima"]
    records = [{"tokens": [n, "flew", "to", p, "today"], "tags": ["B-PER", "O", "O", "B-LOC",
                                                                   "O"]}
               for n in names for p in places]
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records * 4))
    reporter = make_reporter()
    result = run_finetune(_finetune_spec("token_classification",
                                         hyperparameters={"max_steps": 20}),
                          base_bert, {"train": (str(path), "jsonl")}, str(tmp_path / "run"),
                          reporter, device="cpu")
    evals = reporter.evals
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"], evals
    said = [m for _, m in reporter.events]
    # BertForTokenClassification has no pooler: the base's is left unused, and said so.
    assert any("new head: classifier" in m and "pooler" in m for m in said), said
    tags = pipeline("token-classification", model=result.export_dir, device="cpu")
    assert tags("alice flew to rome today")
