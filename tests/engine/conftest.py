"""Shared fixtures for engine tests: corpus slices read in place and a recording reporter."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from jobspec import PretrainSpec, parse_spec
from workers.engine import prepare_data

DATA = Path(__file__).resolve().parents[1] / "data"  # tests/data/README.md
EN_TRAIN = DATA / "en-pretrain.txt.gz"
ZH_TRAIN = DATA / "zh-reviews.txt.gz"


class RecordingReporter:
    """Keeps everything the engine reports; stops once `stop_after_logs` log points arrived."""

    def __init__(self, stop_after_logs: int | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.logs: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.stop_after_logs = stop_after_logs

    def event(self, level: str, message: str) -> None:
        self.events.append((level, message))

    def log(self, point: dict[str, Any]) -> None:
        self.logs.append(point)

    def eval(self, point: dict[str, Any]) -> None:
        self.evals.append(point)

    def checkpoint(self, step: int, directory: str) -> None:
        self.checkpoints.append((step, directory))

    def should_stop(self) -> bool:
        return self.stop_after_logs is not None and len(self.logs) >= self.stop_after_logs


def tiny_bert_export(corpus: Path, out: Path, *, vocab_size: int, dropout: float) -> str:
    """A tiny BertForMaskedLM export, as pretraining writes one: WordPiece trained on the
    corpus, random weights (for tests of fine-tuning, not of pretraining)."""
    from jobspec import ModelSpec, TokenizerSpec
    from workers.engine.architectures import build_model
    from workers.engine.checkpoint import save_export
    from workers.engine.corpus_reader import iter_documents
    from workers.engine.tokenizer import count_characters, train_tokenizer

    docs = list(iter_documents(str(corpus), "txt"))
    spec = TokenizerSpec(type="wordpiece", vocab_size=vocab_size, lowercase=True)
    tokenizer = train_tokenizer(docs, count_characters(docs), spec, "bert", 512)
    shape = ModelSpec(hidden_size=64, num_layers=2, num_heads=2)
    model = build_model(shape, "mlm", tokenizer, seed=0, attention="eager", dropout=dropout)
    return str(save_export(out, model, tokenizer))


def _slice(path: Path, limit: int, out: Path) -> Path:
    """Copy whole lines from the start of a corpus until about `limit` bytes, into tmp."""
    if not path.exists():
        pytest.fail(f"test data not found at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    size = 0
    with opener(path, "rb") as src, out.open("wb") as dst:
        for line in src:
            dst.write(line)
            size += len(line)
            if size >= limit:
                break
    return out


@pytest.fixture(scope="session")
def en_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 300 KB of English prose (State of the Union addresses), as plain text."""
    return _slice(EN_TRAIN, 300_000, tmp_path_factory.mktemp("en") / "en.txt")


@pytest.fixture(scope="session")
def zh_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 200 KB of Chinese product and hotel reviews, one per line."""
    return _slice(ZH_TRAIN, 200_000, tmp_path_factory.mktemp("zh") / "zh.txt")


def tiny_config(**hyperparameters: Any) -> PretrainSpec:
    """A model and run small enough to train in seconds on a laptop CPU."""
    spec = parse_spec(tiny_spec(**hyperparameters))
    assert isinstance(spec, PretrainSpec)
    return spec


TOKENIZERS = {"bert": "wordpiece", "roberta": "bpe", "gpt2": "bpe", "llama": "unigram"}


def tiny_spec(*, architecture: str = "bert", objective: str | None = None,
              tokenizer: str | None = None, **hyperparameters: Any) -> dict[str, Any]:
    """The job spec of tiny_config, for tests that go through parse_spec themselves."""
    hp = {"max_steps": 50, "batch_size": 16, "sequence_length": 64, "learning_rate": 1e-3,
          "warmup_steps": 5, **hyperparameters}
    return {
        "type": "pretrain", "objective": objective or ("clm" if architecture in ("gpt2", "llama")
                                                       else "mlm"),
        "name": "test", "dataset_id": "ds_test",
        "model": {"architecture": architecture, "size": "tiny"},
        "tokenizer": {"type": tokenizer or TOKENIZERS[architecture], "vocab_size": 2000,
                      "lowercase": architecture == "bert"},
        "hyperparameters": hp,
        "log_every": 10, "eval_every": 10, "checkpoint_every": 25,
    }


@pytest.fixture(scope="session")
def en_data(en_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The English slice prepared once (tiny_config's tokenizer and sequence settings)."""
    out = tmp_path_factory.mktemp("en-data")
    prepare_data(tiny_config(), str(en_corpus), "txt", str(out), RecordingReporter())
    return out


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture(scope="session")
def make_reporter() -> type[RecordingReporter]:
    return RecordingReporter


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


@pytest.fixture(scope="session")
def make_spec():
    return tiny_spec
