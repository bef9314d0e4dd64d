"""Helpers for the inference-limit, body-limit and concurrency tests: tiny models built from a
config (nothing downloaded, no training), an in-process app on SQLite, and a real uvicorn API
process with no worker."""

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.stack import CLOZE, ROOT, free_port

WORDS = ("the quick brown fox jumps over the lazy dog in paris france and london england "
         "while a small cat sleeps under an old tree near the river")


def tokenizer(out: Path, vocab_size: int = 200) -> Path:
    """A WordPiece tokenizer with BERT's special tokens, trained here on a line of text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([WORDS] * 10, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    return out


def bert(out: Path, head: str = "mlm", *, vocab_size: int = 200, labels: int = 2,
         max_positions: int = 512, hidden: int = 32, init_std: float = 0.02,
         max_length: int | None = None) -> Path:
    """A tiny BERT (fill-mask, classify or tokens head) with its tokenizer, in `out`. A large
    init_std gives peaked predictions (no near-ties); max_length is the tokenizer's
    model_max_length, as a fine-tuning export sets it."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    torch.manual_seed(0)
    tokenizer(out / "tok", vocab_size)
    tok = AutoTokenizer.from_pretrained(out / "tok")
    names = {i: f"label_{i}" for i in range(labels)}
    config = BertConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, vocab_size=len(tok),
                        max_position_embeddings=max_positions, num_labels=labels,
                        id2label=names, label2id={v: k for k, v in names.items()},
                        initializer_range=init_std)
    model: Any = {"mlm": BertForMaskedLM, "classify": BertForSequenceClassification,
                  "tokens": BertForTokenClassification}[head](config)
    model.save_pretrained(out / "model")
    if max_length is not None:
        tok.model_max_length = max_length
    tok.save_pretrained(out / "model")
    return out / "model"


def gpt2(out: Path) -> Path:
    """A tiny GPT-2 with the WordPiece tokenizer (generation only needs ids and decode)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer(out / "tok")
    tok = AutoTokenizer.from_pretrained(out / "tok")
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=128,
                                       vocab_size=len(tok), eos_token_id=tok.sep_token_id,
                                       bos_token_id=tok.cls_token_id))
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


def archive(directory: Path) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname="model")
    return buf.getvalue()


def make_key(env: dict[str, str], owner: str) -> str:
    out = subprocess.run([*CLOZE, "keys", "create", "--owner", owner], env=env, cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def api_process(home: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes],
                                                                   dict[str, str]]]:
    """`cloze migrate` then `cloze api` (uvicorn) alone: (base URL, process, environment)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(port),
            "PYTHONUNBUFFERED": "1", "CLOZE_BROKER_URL": "", "CLOZE_STORAGE_URL": "", **env}
    subprocess.run([*CLOZE, "migrate"], env=full, check=True, cwd=ROOT, capture_output=True)
    log = open(home / "api.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*CLOZE, "api"], env=full, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "api.log").read_text(errors="replace")[-4000:])
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url, proc, full
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def clear_caches() -> None:
    """Forget the settings, store, database engine, Celery app (its broker is the settings')
    and model cache this process built."""
    from service import db, queue, storage
    from service.inference import pipelines
    from service.settings import get_settings

    for cached in (get_settings, storage.get_store, db.get_engine, db._sessionmaker,
                   queue.get_celery, pipelines._cache, pipelines._threads):
        cached.cache_clear()


def publish(directory: Path, task: str) -> str:
    """Record a model as an import would (the import route is tested elsewhere)."""
    from service.db import session_scope
    from service.domain import models
    from service.domain.tables import LOCAL_OWNER
    from service.storage import get_store

    with session_scope() as session:
        row = models.publish(session=session, store=get_store(), export_dir=directory,
                             owner=LOCAL_OWNER, name=directory.parent.name, job_id=None,
                             task=task, architecture="bert", mask_token="[MASK]", details={})
        return row.id
