"""run_finetune: fine-tune a base model for text classification (single texts or pairs),
regression, multi-label classification or token classification, and export it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobspec import FinetuneSpec
from jobspec.formats import is_entity_tagging
from jobspec.model_facts import PROBLEM_TYPES, run_fingerprint
from jobspec.pooling import base_pooling
from jobspec.sizing import estimate_finetune_bytes
from workers.engine.distributed import SINGLE, Parallel
from workers.engine.failures import ConfigError
from workers.engine.finetune.dataset import encode_tagged, encode_texts
from workers.engine.finetune.lora import add_lora, unwrap
from workers.engine.finetune.model import load_base
from workers.engine.finetune.records import load_splits
from workers.engine.finetune.task import Classification
from workers.engine.loop import LoopResult, LoopSettings, pick_device, train
from workers.engine.optim import Schedule
from workers.engine.reporter import Reporter
from workers.engine.speed import resolve_attention


@dataclass
class FinetuneResult(LoopResult):
    task: str = ""  # the transformers pipeline task of the export
    labels: list[str] = field(default_factory=list)
    test_metrics: dict[str, Any] | None = None


def _describe(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "step")


def run_finetune(
    spec: FinetuneSpec,
    base_model_dir: str | None,
    data: dict[str, Any],
    workdir: str,
    reporter: Reporter,
    device: str | None = None,
    resume_from: str | None = None,
    base_config: dict[str, Any] | None = None,
    parallel: Parallel = SINGLE,
) -> FinetuneResult:
    """Fine-tune base_model_dir (or a random model of base_config) on data: split name ->
    (path, format[, tag column]); checkpoint and export under workdir. resume_from
    continues exactly. parallel: this process's rank when torchrun runs it on several
    (workers/multiprocess.py); rank 0 alone exports and scores the test split."""
    if spec.task == "question_answering":  # a plug-in of its own (finetune/qa.py)
        from workers.engine.finetune.qa import run_question_answering

        return run_question_answering(spec, base_model_dir, data, workdir, reporter, device,
                                      resume_from, base_config, parallel)
    reporter = parallel.reporter(reporter)
    hp = spec.hyperparameters
    dev = pick_device(device)

    # -- Data: every split read and checked before a model is loaded, so bad data fails fast.
    labels_given = tuple(spec.labels) if spec.labels is not None else None
    splits = load_splits(spec.task, data, labels_given, spec.validation_fraction,
                         columns=spec.columns)
    for note in splits.notes:
        reporter.event("info", note)
    labels = splits.labels

    # -- Model: the base encoder with a new head (or all random), LoRA adapters if asked.
    base = load_base(spec.task, labels, base_model_dir, base_config, dropout=hp.dropout,
                     attention=resolve_attention("auto", dev), seed=hp.seed)
    if hp.sequence_length > base.max_length:
        raise ConfigError(f"hyperparameters.sequence_length ({hp.sequence_length}) exceeds "
                          f"what the base model takes ({base.max_length})")
    tokenizer, model = base.tokenizer, base.model
    # The export's tokenizer says how long the texts it was trained on were: serving
    # truncates classification inputs to it, as training did.
    tokenizer.model_max_length = hp.sequence_length
    origin = "randomly initialised" if base_model_dir is None else "from the base model"
    reporter.event("info", f"{type(model).__name__} for {len(labels)} labels {origin}, new "
                           f"head: {', '.join(base.head)}" +
                           (f"; unused base weights: {len(base.unused)} (e.g. "
                            f"{base.unused[0]})" if base.unused else ""))
    config: Any = model.config
    # Of the exported model: LoRA's adapters are merged into the weights they adapt.
    num_parameters = sum(p.numel() for p in model.parameters())
    memory = estimate_finetune_bytes(spec, config, num_parameters, len(labels))

    # -- Tokenize every split once (pairs in the model's pair format); word tags go on each
    # word's first piece.
    tagging = spec.task == "token_classification"
    label_ids = {label: i for i, label in enumerate(labels)}
    encoded = {name: encode_tagged(examples, tokenizer, label_ids, hp.sequence_length)
               if tagging else encode_texts(examples, tokenizer, label_ids, hp.sequence_length,
                                            PROBLEM_TYPES[spec.task])
               for name, examples in (("train", splits.train), ("valid", splits.valid),
                                      ("test", splits.test)) if examples is not None}
    for name, split in encoded.items():
        if split.truncated:
            unit = "sentences" if tagging else "texts"
            reporter.event("warning" if name == "train" else "info",
                           f"{split.truncated} of {len(split)} {name} {unit} were cut to "
                           f"sequence_length ({hp.sequence_length} tokens)")
    train_split = encoded["train"]
    steps_per_epoch = hp.steps_per_epoch(len(train_split))
    # -- "auto" hyperparameters: resolved from the base model and the data, and reported.
    total, learning_rate, resolved = hp.resolve(len(train_split), config.hidden_size)
    if resolved:
        reporter.event("info", "hyperparameters " + "; ".join(resolved))
    if spec.adapter is not None:  # AdaLoRA's rank budget is scheduled over the run's steps
        model = add_lora(model, spec.adapter, base.head, total)
    # Checkpoints hold the transformers model itself (with LoRA: adapters injected).
    weights = unwrap(model) if spec.adapter is not None else model
    reporter.event("info", f"{total} steps of {hp.batch_size} examples: "
                           f"{total * hp.batch_size / len(train_split):.2f} epochs of "
                           f"{len(train_split)} training examples; {len(encoded['valid'])} "
                           "validation examples")
    # What must be the same for a checkpoint to continue this run: the spec's settings
    # that change the numbers (jobspec/model_facts.py), the labels and the data.
    fingerprint = run_fingerprint(
        spec, labels=labels, base_model=base_model_dir is not None,
        examples={name: len(split) for name, split in encoded.items()},
        tokens={name: split.tokens() for name, split in encoded.items()})
    task = Classification(model, weights, tokenizer, encoded, labels,
                          bio=spec.task == "token_classification"
                          and is_entity_tagging(labels),
                          batch_size=hp.batch_size, seed=hp.seed,
                          lora=spec.adapter is not None, fingerprint=fingerprint,
                          adalora=spec.adapter is not None
                          and spec.adapter.type == "adalora")
    loop = LoopSettings(
        schedule=Schedule(total=total, warmup=round(hp.warmup_ratio * total)),
        batch_size=hp.batch_size, micro_batch=hp.batch_size, learning_rate=learning_rate,
        weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, precision=hp.precision,
        log_every=spec.log_every, eval_every=spec.eval_every or steps_per_epoch,
        checkpoint_every=spec.checkpoint_every or steps_per_epoch, memory_bytes=memory,
        early_stopping=spec.early_stopping,
        pooling=None if base_model_dir is None else base_pooling(base_model_dir))
    result = train(task, loop, workdir, reporter, dev, resume_from, parallel)

    # -- The test split, scored on the exported model.
    test_metrics = None
    if result.export_dir is not None and "test" in encoded and task.final is not None:
        test_metrics = task.evaluate(dev, encoded["test"], task.final)
        reporter.event("info", f"test ({len(encoded['test'])} examples): "
                               f"{_describe(test_metrics)}")
    return FinetuneResult(**{**vars(result), "num_parameters": num_parameters},
                          task=spec.pipeline_task, labels=labels,
                          test_metrics=test_metrics)
