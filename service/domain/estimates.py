"""What a job would do, worked out before it runs: the answer of a dry run, and the job's
eta until its first steps are measured.

Counts are exact where the inputs are known (steps, epochs and parameters from the spec, the
dataset's record counts, token shards an earlier job made); tokens of text not tokenized yet
are estimated from a sample of the stored file and said to be. Time comes from the
throughput workers measured on earlier jobs (calibration.py), else a conservative default.
"""

import gzip
import io
import json
import logging
import math
import re
import zlib
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy.orm import Session

from jobspec import evaluation as ev
from jobspec import formats, parse_spec
from jobspec.shard_key import tokenized_prefix
from jobspec.sizing import estimate_finetune_bytes, estimate_pretrain_bytes, pretrain_parameters
from service.domain import calibration
from service.domain.specs import EvaluateJobCreate, FinetuneJobCreate, PretrainJobCreate
from service.domain.tables import DatasetRow, ModelRow
from service.storage import ObjectStore
from service.transformers_import import transformers

log = logging.getLogger("cloze.estimates")

# Bytes of a stored dataset read to estimate its tokens (decompressed).
SAMPLE_BYTES = 1 << 20
# Tokens per word (a run of letters or digits, or one punctuation mark) and per CJK
# character, of a tokenizer trained on the text, by its vocabulary: a small vocabulary
# splits more. Fitted to wordpiece, byte-level BPE and unigram tokenizers of 1,000-8,192
# entries trained on the English and Chinese test slices; tests/test_dry_run.py holds the
# estimate within TOKENS_FACTOR of the tokenizers' counts.
PER_WORD_AT_1000, PER_WORD_PER_DOUBLING, PER_WORD_MIN = 1.58, 0.19, 1.0
# WordPiece keeps every CJK character a token; BPE and unigram merge frequent pairs.
PER_CJK_PER_DOUBLING, PER_CJK_MIN = 0.16, 0.5
WORD = re.compile(r"[^\W\d_]+|\d+|[^\w\s]", re.UNICODE)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class DataFigures(BaseModel):
    """What the job reads. source: "tokenized" (counted when an earlier job on this
    dataset and tokenizer made its token shards: exact), "estimated" (from a sample of the
    stored text) or "records" (the dataset's record counts: exact)."""

    source: Literal["tokenized", "estimated", "records"]
    documents: int
    tokens: int | None = None
    vocab_size: int | None = None
    train_blocks: int | None = None
    validation_blocks: int | None = None
    train_examples: int | None = None
    validation_examples: int | None = None
    labels: int | None = None


class TimeFigures(BaseModel):
    seconds: float  # setup_seconds + tokens / tokens_per_second
    tokens: int  # tokens the training steps go through
    tokens_per_second: float
    # Outside the training loop: loading the base model, reading or tokenizing the data,
    # publishing the export (measured with the rate; None for the default, which counts
    # a fixed allowance).
    setup_seconds: float | None = None
    # "measured": a worker measured this model size; "scaled": from another size it
    # measured, by the parameter ratio; "default": no measurement yet, a conservative rate.
    source: Literal["measured", "scaled", "default"]
    worker_kind: str | None


class JobEstimate(BaseModel):
    object: Literal["job_estimate"] = "job_estimate"
    dry_run: Literal[True] = True
    type: str
    name: str
    spec: dict[str, Any]
    steps: int
    epochs: float | None
    parameters: int | None
    memory_bytes: int | None
    data: DataFigures
    time: TimeFigures | None
    # An evaluate job: the estimate of each task's fine-tune (the job runs each once per
    # model it fine-tunes: the model, the one to compare, random init); its figures above
    # are their sums.
    tasks: list["JobEstimate"] | None = None


def _read_sample(store: ObjectStore, key: str) -> tuple[bytes, float]:
    """The first SAMPLE_BYTES of a stored file, decompressed, and how many stored bytes one
    byte of the sample stands for (below 1 for a .gz)."""
    with store.open_read(key) as raw:
        if not key.endswith(".gz"):
            return raw.read(SAMPLE_BYTES), 1.0
        counted = _Counting(raw)
        with gzip.GzipFile(fileobj=counted) as gz:
            data = gz.read(SAMPLE_BYTES)
        return data, counted.read_bytes / max(len(data), 1)


class _Counting(io.RawIOBase):
    """A reader that counts the bytes taken from the stream it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.read_bytes = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.inner.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


def text_tokens(text: str, *, kind: str | None = None, vocab_size: int = 8192) -> float:
    """Estimated tokens of a text for a tokenizer of this kind and vocabulary trained on
    text like it."""
    doublings = max(0.0, math.log2(vocab_size / 1000))
    per_word = max(PER_WORD_MIN, PER_WORD_AT_1000 - PER_WORD_PER_DOUBLING * doublings)
    per_cjk = 1.0 if kind in (None, "wordpiece") else \
        max(PER_CJK_MIN, 1.0 - PER_CJK_PER_DOUBLING * doublings)
    cjk = len(CJK.findall(text))
    return per_cjk * cjk + per_word * len(WORD.findall(CJK.sub(" ", text)))


def _plain_text(text: str, fmt: str, *, cut: bool) -> str:
    """The words of a sample: JSON lines' "text" (or "tokens"), CoNLL's first column."""
    lines = text.splitlines()
    if cut:
        lines = lines[:-1]  # the last line may be cut short
    layout = formats.FORMATS[fmt].layout if fmt in formats.FORMATS else "lines"
    if layout == "columns":
        return " ".join(line.split()[0] for line in lines
                        if line.strip() and not line.startswith(("#", formats.DOCSTART)))
    if layout != "json":
        return "\n".join(lines)
    words = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            value = record.get("text", record.get("tokens", ""))
            words.append(" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return "\n".join(words)


def _corpus_tokens(store: ObjectStore, dataset: DatasetRow, kind: str | None = None,
                   vocab_size: int = 8192) -> int | None:
    """Estimated tokens of a whole text corpus, from a sample scaled to its stored size;
    None if the stored file cannot be read (the worker will say why, if it cannot either)."""
    try:
        sample, stored_per_byte = _read_sample(store, dataset.storage_key)
    except (OSError, EOFError, ValueError, zlib.error):
        log.warning("cannot sample dataset %s", dataset.id, exc_info=True)
        return None
    if not sample:
        return 0
    text = _plain_text(sample.decode("utf-8", errors="replace"), dataset.format,
                       cut=len(sample) == SAMPLE_BYTES)
    whole = min(1.0, len(sample) * stored_per_byte / max(dataset.bytes, 1))
    return round(text_tokens(text, kind=kind, vocab_size=vocab_size) / whole)


def _tokenized_meta(store: ObjectStore, dataset_id: str, spec: PretrainJobCreate
                    ) -> dict[str, Any] | None:
    key = f"{tokenized_prefix(dataset_id, spec)}/meta.json"
    if not store.exists(key):
        return None
    try:
        with store.open_read(key) as fh:
            meta = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _pretrain_data(store: ObjectStore, dataset: DatasetRow, spec: PretrainJobCreate
                   ) -> DataFigures:
    meta = _tokenized_meta(store, dataset.id, spec)
    if meta is not None:
        return DataFigures(source="tokenized", documents=meta["documents"],
                           tokens=meta["tokens"], vocab_size=meta["vocab_size"],
                           train_blocks=meta["train_blocks"],
                           validation_blocks=meta["validation_blocks"])
    hp = spec.hyperparameters
    tokens = _corpus_tokens(store, dataset, spec.tokenizer.type, spec.tokenizer.vocab_size)
    # Packed rows: separators between documents, framing tokens per row (encoders); pairs
    # for mlm_nsp frame [CLS] a [SEP] b [SEP].
    framing = {"mlm": 2, "mlm_nsp": 3}.get(spec.objective or "", 0)
    vocab = None if spec.base_model_id else spec.tokenizer.vocab_size
    if tokens is None:
        return DataFigures(source="estimated", documents=dataset.documents, vocab_size=vocab)
    blocks = (tokens + dataset.documents) // (hp.sequence_length - framing)
    valid = min(blocks, max(1, round(blocks * spec.validation_fraction))) if blocks else 0
    return DataFigures(source="estimated", documents=dataset.documents, tokens=tokens,
                       vocab_size=vocab, train_blocks=max(blocks - valid, 1),
                       validation_blocks=valid)


def _base_vocab(base: ModelRow | None) -> int | None:
    tokenizer = (base.details or {}).get("tokenizer") if base else None
    size = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    return size if isinstance(size, int) else None


def _pretrain(session: Session, store: ObjectStore, spec: PretrainJobCreate,
              dataset: DatasetRow) -> tuple[DataFigures, int, float | None, int | None,
                                            int | None, str]:
    """(data, steps, epochs, parameters, memory bytes, objective key) of a pretraining job."""
    hp = spec.hyperparameters
    data = _pretrain_data(store, dataset, spec)
    epochs = hp.max_steps * hp.batch_size / data.train_blocks if data.train_blocks else None
    if spec.base_model_id is None:
        vocab = data.vocab_size or spec.tokenizer.vocab_size
        parameters: int | None = pretrain_parameters(spec, vocab)
        memory: int | None = estimate_pretrain_bytes(spec, vocab)
    else:  # continued: the base model's own size
        base = session.get(ModelRow, spec.base_model_id)
        data.vocab_size = data.vocab_size or _base_vocab(base)
        parameters = (base.details or {}).get("num_parameters") if base else None
        memory = None
    return data, hp.max_steps, epochs, parameters, memory, spec.objective or "mlm"


def _examples(train: DatasetRow, valid: DatasetRow | None, fraction: float
              ) -> tuple[int, int]:
    """(train, validation) examples as the engine splits them (records.load_splits)."""
    if valid is not None:
        return train.documents, valid.documents
    splits: dict[str, int] = {}
    for name, count in (train.splits or {}).items():  # as records name them: "validation"
        split = formats.SPLITS.get(name, name)
        splits[split] = splits.get(split, 0) + count
    if splits.get("valid"):
        return splits.get("train", 0), splits["valid"]
    n = splits.get("train", train.documents)
    held = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    return n - held, held


def _finetune_model(store: ObjectStore, base: ModelRow, spec: FinetuneJobCreate, labels: int
                    ) -> tuple[int | None, int | None]:
    """(parameters, training memory bytes) of the base model with the task's head for
    `labels` labels, built from its config.json on the meta device (nothing allocated);
    the memory bound is the one the worker checks (workers/engine/finetune/run.py)."""
    import torch

    try:
        with store.open_read(f"{base.storage_prefix}/config.json") as fh:
            config_dict = json.loads(fh.read())
        model_type = config_dict.pop("model_type")
        config = transformers().AutoConfig.for_model(model_type, **config_dict)
        config.num_labels = labels
        auto = (transformers().AutoModelForSequenceClassification
                if spec.task == "text_classification"
                else transformers().AutoModelForTokenClassification)
        with torch.device("meta"):
            model = auto.from_config(config, dtype=None)
        parameters = sum(p.numel() for p in model.parameters())
        return parameters, estimate_finetune_bytes(spec, config, parameters, labels)
    except Exception:  # an estimate, never a reason to refuse: the worker says what fails
        log.warning("cannot count the parameters of %s for %s", base.id, spec.task,
                    exc_info=True)
        return None, None


def _finetune(session: Session, store: ObjectStore, spec: FinetuneJobCreate
              ) -> tuple[DataFigures, int, float | None, int | None, int | None, float, str,
                         str]:
    """(data, steps, epochs, parameters, memory bytes, tokens per example, objective key,
    architecture)."""
    hp = spec.hyperparameters
    train = session.get(DatasetRow, spec.dataset_id)
    assert train is not None  # checked by jobs.admit
    valid = session.get(DatasetRow, spec.validation_dataset_id) \
        if spec.validation_dataset_id else None
    test = session.get(DatasetRow, spec.test_dataset_id) if spec.test_dataset_id else None
    n_train, n_valid = _examples(train, valid, spec.validation_fraction)
    labels = len(spec.labels) if spec.labels is not None else len(
        {label for ds in (train, valid, test) if ds is not None for label in ds.labels or ()})
    steps = hp.total_steps(n_train)
    epochs = steps * hp.batch_size / n_train if n_train else None
    base = session.get(ModelRow, spec.base_model_id)
    assert base is not None  # checked by jobs.admit
    parameters, memory = _finetune_model(store, base, spec, labels)
    tokenizer = (base.details or {}).get("tokenizer")
    kind = tokenizer.get("type") if isinstance(tokenizer, dict) else None
    tokens = _corpus_tokens(store, train, kind if isinstance(kind, str) else None,
                            _base_vocab(base) or 8192)
    # Plus the framing tokens ([CLS] ... [SEP]); texts are cut to sequence_length.
    per_example = float(hp.sequence_length) if tokens is None else \
        min(float(hp.sequence_length), tokens / max(train.documents, 1) + 2)
    data = DataFigures(source="records", documents=train.documents,
                       train_examples=n_train, validation_examples=n_valid, labels=labels)
    return data, steps, epochs, parameters, memory, per_example, spec.task, base.architecture


def _evaluate(session: Session, store: ObjectStore, job_in: EvaluateJobCreate, name: str
              ) -> JobEstimate:
    """An evaluate job's figures: its tasks' fine-tunes, each as many times as the job
    fine-tunes a model on it (the comparison model is counted at the model's size), run one
    after another (resources.processes at once take less wall-clock time than this)."""
    finetunes = sum(v != ev.BASELINE for v in job_in.variants())
    tasks = []
    for i, task in enumerate(job_in.tasks):
        spec = parse_spec(ev.finetune_spec(job_in, i))
        assert isinstance(spec, FinetuneJobCreate)
        tasks.append(estimate(session=session, store=store, job_in=spec,
                              name=task.name or task.dataset_id))
    timed = [t.time for t in tasks if t.time is not None]
    time = None
    if len(timed) == len(tasks):
        seconds = finetunes * sum(t.seconds for t in timed)
        tokens = finetunes * sum(t.tokens for t in timed)
        time = TimeFigures(seconds=round(seconds, 1), tokens=tokens,
                           tokens_per_second=round(tokens / max(seconds, 1e-9), 1),
                           source=timed[0].source, worker_kind=timed[0].worker_kind)
    memories = [t.memory_bytes for t in tasks if t.memory_bytes is not None]
    data = DataFigures(source="records", documents=sum(t.data.documents for t in tasks),
                       train_examples=sum(t.data.train_examples or 0 for t in tasks),
                       validation_examples=sum(t.data.validation_examples or 0 for t in tasks))
    return JobEstimate(type=job_in.type, name=name, spec={**job_in.stored_spec(), "name": name},
                       steps=finetunes * sum(t.steps for t in tasks), epochs=None,
                       parameters=tasks[0].parameters, memory_bytes=max(memories, default=None),
                       data=data, time=time, tasks=tasks)


def estimate(*, session: Session, store: ObjectStore, job_in: PretrainJobCreate |
             FinetuneJobCreate | EvaluateJobCreate, name: str) -> JobEstimate:
    """What an admitted spec would do (jobs.admit has checked it and its datasets)."""
    if isinstance(job_in, EvaluateJobCreate):
        return _evaluate(session, store, job_in, name)
    memory: int | None = None
    if isinstance(job_in, PretrainJobCreate):
        dataset = session.get(DatasetRow, job_in.dataset_id)
        assert dataset is not None
        data, steps, epochs, parameters, memory, objective = _pretrain(
            session, store, job_in, dataset)
        hp = job_in.hyperparameters
        tokens = steps * hp.batch_size * hp.sequence_length
        architecture: str = job_in.model.architecture
    else:
        (data, steps, epochs, parameters, memory, per_example, objective,
         architecture) = _finetune(session, store, job_in)
        tokens = round(steps * job_in.hyperparameters.batch_size * per_example)
    time = None
    if parameters:
        rate = calibration.rate(session, architecture=architecture, objective=objective,
                                parameters=parameters)
        if rate is None:
            seconds = calibration.default_seconds(parameters=parameters, tokens=tokens,
                                                  steps=steps)
            time = TimeFigures(seconds=round(seconds, 1), tokens=tokens,
                               tokens_per_second=round(tokens / seconds, 1),
                               source="default", worker_kind=None)
        else:
            time = TimeFigures(
                seconds=round(rate.setup_seconds + tokens / rate.tokens_per_second, 1),
                tokens=tokens, tokens_per_second=round(rate.tokens_per_second, 1),
                setup_seconds=round(rate.setup_seconds, 1), source=rate.source,
                worker_kind=rate.worker_kind)
    return JobEstimate(type=job_in.type, name=name, spec={**job_in.stored_spec(), "name": name},
                       steps=steps, epochs=None if epochs is None else round(epochs, 4),
                       parameters=parameters, memory_bytes=memory, data=data, time=time)


def estimate_or_none(*, session: Session, store: ObjectStore,
                     job_in: PretrainJobCreate | FinetuneJobCreate | EvaluateJobCreate,
                     name: str
                     ) -> JobEstimate | None:
    """What a submission records of its estimate (its eta until measured; its checkpoints'
    size, for the storage quota); None when it cannot be told (an estimate is never a
    reason to refuse or fail a submission)."""
    try:
        return estimate(session=session, store=store, job_in=job_in, name=name)
    except Exception:
        log.warning("no estimate for a %s job", job_in.type, exc_info=True)
        return None
