"""Side-by-side pretraining benchmark: transformers' Trainer (A: fp32 defaults, B: tuned)
against the Cloze engine (C: defaults, C-fast: the "fast" recipe, C-tied: BERT's tied
embeddings, the default before 2026-11-29), for masked-LM (BERT) and
causal-LM (GPT-2) pretraining in one invocation.

Per objective: same tokenizer, same packed blocks (tokenized once with prepare_data), same
model config (architectures.model_config; only the dropout differs, as each side defaults).
Each variant trains in a fresh subprocess (separate peak-memory figures) and is evaluated by
one held-out evaluator (MLM: 15% masking, fixed seed; CLM: mean next-token cross-entropy;
both in fp32 on the same held-out blocks) every --eval-every steps, with the clock paused,
and once more on the saved weights at the end.

    python bench/train_throughput.py                      # BERT-mini + GPT-2 mini on CPU
    python bench/train_throughput.py --quick              # a smoke run of a few steps
    python bench/train_throughput.py --device cuda --size base   # tokens/s and MFU on a GPU
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workers.engine.pretrain as engine_pretrain  # noqa: E402
from jobspec import PretrainSpec, parse_spec  # noqa: E402
from workers.engine import data_key, prepare_data, run_pretraining  # noqa: E402
from workers.engine.architectures import build_model, flops_per_token, peak_flops  # noqa: E402
from workers.engine.blocks import ShardedBlocks  # noqa: E402
from workers.engine.data import VALID_FILE, load_data_tokenizer, load_meta  # noqa: E402
from workers.engine.masking import IGNORE_INDEX, Masker  # noqa: E402
from workers.engine.objectives.mlm import (  # noqa: E402
    EVAL_MASK_PROBABILITY,
    EVAL_MASK_SEED,
    mlm_parts,
)
from workers.engine.speed import cpu_has_bf16  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "en" / "pretrain" / "train.txt.gz"
OBJECTIVES = ("mlm", "clm")
VARIANTS = {"mlm": ("A", "B", "C", "C-fast", "C-tied"), "clm": ("A", "B", "C")}
ARCHITECTURE = {"mlm": "bert", "clm": "gpt2"}
TOKENIZER = {"mlm": "wordpiece", "clm": "bpe"}
MODEL_NAME = {"mlm": "BERT", "clm": "GPT-2"}
TRAINER_DROPOUT = 0.1  # the stock BertConfig / GPT2Config value, what a Trainer user gets
DESCRIPTIONS = {
    "mlm": {
        "A": "Trainer + DataCollatorForLanguageModeling, fp32, defaults; dropout 0.1",
        "B": "Trainer tuned: bf16, SDPA, adamw_torch_fused; dropout 0.1",
        "C": "Cloze engine, defaults (dropout 0)",
        "C-fast": 'Cloze engine, recipe "fast" (dropout 0)',
        "C-tied": "Cloze engine, defaults but tied input/output embeddings (dropout 0)",
    },
    "clm": {
        "A": "Trainer + DataCollatorForLanguageModeling(mlm=False), fp32, defaults; dropout 0.1",
        "B": "Trainer tuned: bf16, SDPA, adamw_torch_fused; dropout 0.1",
        "C": "Cloze engine, defaults (dropout 0)",
    },
}
EVAL_BLOCKS = 512  # held-out blocks scored at every eval point (the same for every variant)
SEQUENCE_LENGTH = 128
SEED = 0


# ----------------------------------------------------------------------------- settings

def spec_dict(args: argparse.Namespace, objective: str, recipe: str | None = None,
              tied: bool | None = None) -> dict[str, Any]:
    """The engine spec every variant of an objective shares: model, tokenizer, optimisation
    (tied: the embeddings' tying, None for the architecture's default)."""
    compile_ = {"compile": True} if getattr(args, "compile", False) else {}
    return {
        "type": "pretrain", "objective": objective, "dataset_id": "bench",
        "model": {"architecture": ARCHITECTURE[objective], "size": args.size,
                  "tie_embeddings": tied},
        "tokenizer": {"type": TOKENIZER[objective], "vocab_size": 8192},
        "hyperparameters": {"max_steps": args.steps, "batch_size": args.batch_size,
                            "sequence_length": SEQUENCE_LENGTH,
                            "learning_rate": args.learning_rate, "warmup_steps": args.warmup,
                            "weight_decay": 0.01, "seed": SEED, **compile_},
        "recipe": recipe,
        # Evaluation and checkpoints are the bench's business: only at the very end.
        "log_every": 1, "eval_every": 10**9, "checkpoint_every": 10**9,
    }


def job_spec(args: argparse.Namespace, objective: str, recipe: str | None = None,
             tied: bool | None = None) -> PretrainSpec:
    spec = parse_spec(spec_dict(args, objective, recipe, tied))
    assert isinstance(spec, PretrainSpec)
    return spec


def slice_corpus(megabytes: float, out: Path) -> Path:
    """The first `megabytes` of the English corpus, whole lines, as plain text."""
    if not CORPUS.exists():
        sys.exit(f"error: corpus not found at {CORPUS}")
    limit, size = int(megabytes * 1e6), 0
    with gzip.open(CORPUS, "rb") as src, out.open("wb") as dst:
        for line in src:
            dst.write(line)
            size += len(line)
            if size >= limit:
                break
    return out


class QuietReporter:
    """Collects events; prints nothing."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, level: str, message: str) -> None:
        self.events.append(message)

    def log(self, point: dict[str, Any]) -> None:
        pass

    def eval(self, point: dict[str, Any]) -> None:
        pass

    def checkpoint(self, step: int, directory: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


# ----------------------------------------------------------------------------- evaluation

class Evaluator:
    """One held-out scorer for every variant of an objective, in fp32, on up to EVAL_BLOCKS
    held-out blocks: MLM with the engine's eval masking (15%, 80/10/10, fixed seed, drawn
    once), CLM as the mean next-token cross-entropy over every position but each block's last.
    """

    def __init__(self, objective: str, data_dir: Path, batch_size: int) -> None:
        tokenizer = load_data_tokenizer(data_dir)
        valid = np.load(data_dir / VALID_FILE, mmap_mode="r")
        blocks = torch.from_numpy(np.asarray(valid[:EVAL_BLOCKS], dtype=np.int64))
        self.objective, self.blocks = objective, len(blocks)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        if objective == "mlm":
            masker = Masker(len(tokenizer), tokenizer.all_special_ids, tokenizer.mask_token_id,
                            EVAL_MASK_PROBABILITY)
            generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
            self.batches = [masker(rows, generator) for rows in blocks.split(batch_size)]
        else:
            self.batches = [(rows, rows[:, 1:]) for rows in blocks.split(batch_size)]

    @torch.no_grad()
    def __call__(self, model: Any, device: str) -> float:
        was_training = model.training
        model.eval()  # no dropout
        loss_sum, count = 0.0, 0
        for inputs, labels in self.batches:
            inputs, labels = inputs.to(device), labels.to(device)
            if self.objective == "mlm":
                encoder, head = mlm_parts(model)
                targets = labels != IGNORE_INDEX
                # The head on masked positions only: the same numbers as the full head.
                logits = head(encoder(input_ids=inputs).last_hidden_state[targets]).float()
                gold = labels[targets]
            else:
                hidden = model.base_model(input_ids=inputs).last_hidden_state[:, :-1]
                logits = model.get_output_embeddings()(hidden).flatten(0, 1).float()
                gold = labels.flatten()
            loss_sum += F.cross_entropy(logits, gold, reduction="sum").item()
            count += gold.numel()
        model.train(was_training)
        return loss_sum / count


# ----------------------------------------------------------------------------- one variant

class Clock:
    """Step wall-clock between consecutive step ends, with evaluation pauses taken out."""

    def __init__(self, evaluator: Evaluator, device: str, eval_every: int, steps: int) -> None:
        self.evaluator = evaluator
        self.device, self.eval_every, self.steps = device, eval_every, steps
        self.step_seconds: list[float] = []
        self.curve: list[dict[str, float]] = []  # step, train seconds so far, eval_loss
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def step_end(self, step: int, model: torch.nn.Module) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.step_seconds.append(now - self.last)
        if step % self.eval_every == 0 or step == self.steps:
            loss = self.evaluator(model, self.device)
            self.curve.append({"step": step, "seconds": sum(self.step_seconds),
                               "eval_loss": loss})
        self.last = time.perf_counter()  # the eval is not training time


def run_trainer(args: argparse.Namespace, variant: str, data_dir: Path, out: Path,
                clock: Clock) -> torch.nn.Module:
    """A or B: transformers' Trainer on the same blocks, as run_mlm.py / run_clm.py would."""
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    objective = args.objective
    tokenizer = load_data_tokenizer(data_dir)
    blocks = ShardedBlocks([data_dir / s["file"] for s in load_meta(data_dir)["shards"]])
    tuned = variant == "B"
    bf16 = tuned and (args.device == "cuda" or cpu_has_bf16())
    # The config the engine builds (architectures.model_config), with the stock dropout;
    # SDPA is also transformers 5's default; the stock full-vocabulary head.
    model = build_model(job_spec(args, objective).model, objective, tokenizer, seed=SEED,
                        attention="sdpa", dropout=TRAINER_DROPOUT)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": torch.from_numpy(blocks.take(np.array([i]))[0])}

    class Timing(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            clock.start()

        def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
            clock.step_end(state.global_step, model)

    training_args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup, weight_decay=0.01, lr_scheduler_type="linear",
        max_grad_norm=1.0, seed=SEED, use_cpu=args.device == "cpu", bf16=bf16,
        # adamw_torch_fused is also transformers 5's default; B names it to be explicit.
        optim="adamw_torch_fused", save_strategy="no", report_to=[], logging_steps=10**9,
        disable_tqdm=True, dataloader_drop_last=True,
    )
    if objective == "mlm":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    else:  # labels = the inputs (the model shifts them); blocks have no padding to drop
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=Blocks(),
                      data_collator=collator, callbacks=[Timing()])
    trainer.train()
    trainer.save_model(str(out / "model"))
    return model


def run_engine(args: argparse.Namespace, variant: str, data_dir: Path, out: Path,
               clock: Clock) -> list[str]:
    """C, C-fast or C-tied: the Cloze engine on the prepared data."""
    recipe = "fast" if variant == "C-fast" else None
    spec = job_spec(args, args.objective, recipe, tied=True if variant == "C-tied" else None)
    holder: dict[str, torch.nn.Module] = {}

    class Reporter(QuietReporter):
        def log(self, point: dict[str, Any]) -> None:
            clock.step_end(point["step"], holder["model"])

    # The engine builds its model inside run_pretraining; keep a handle for the evals.
    build = engine_pretrain.build_model

    def capture(*a: Any, **kw: Any) -> torch.nn.Module:
        holder["model"] = build(*a, **kw)
        return holder["model"]

    reporter = Reporter()
    clock.start()
    with mock.patch.object(engine_pretrain, "build_model", capture):
        result = run_pretraining(spec, str(data_dir), str(out / "run"), reporter,
                                 device=args.device)
    assert result.export_dir is not None
    os.replace(result.export_dir, out / "model")
    return reporter.events


def worker(args: argparse.Namespace) -> None:
    """Train one variant; write its measurements as JSON to --result."""
    data_dir, out = Path(args.data_dir), Path(args.result).parent
    evaluator = Evaluator(args.objective, data_dir, 32)
    clock = Clock(evaluator, args.device, args.eval_every, args.steps)
    load_before = os.getloadavg()[0]
    events: list[str] = []
    if args.worker in ("A", "B"):
        run_trainer(args, args.worker, data_dir, out, clock)
    else:
        events = run_engine(args, args.worker, data_dir, out, clock)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    Path(args.result).write_text(json.dumps({
        "variant": args.worker, "step_seconds": clock.step_seconds, "curve": clock.curve,
        "peak_mib": peak, "load": [load_before, os.getloadavg()[0]], "events": events,
    }))


# ----------------------------------------------------------------------------- the parent

def launch(args: argparse.Namespace, objective: str, variant: str, data_dir: Path, work: Path,
           steps: int, eval_every: int) -> dict[str, Any]:
    """Run one variant in a fresh Python process (its own peak memory) and read its result."""
    out = work / f"{objective}-{variant}-{steps}"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--worker", variant, "--objective", objective,
               "--data-dir", str(data_dir), "--result", str(out / "result.json"),
               "--steps", str(steps), "--eval-every", str(eval_every), "--device", args.device,
               "--size", args.size, "--batch-size", str(args.batch_size),
               "--learning-rate", str(args.learning_rate),
               "--warmup", str(min(args.warmup, steps))]
    command += ["--compile"] if args.compile else []
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {objective} variant {variant} failed:\n{proc.stderr[-4000:]}")
    result = json.loads((out / "result.json").read_text())
    result["wall"] = time.perf_counter() - started
    result["model_dir"] = str(out / "model")
    return result


def tokens_per_second(result: dict[str, Any], warmup: int, tokens_per_step: int) -> float:
    """Median step time after the warm-up steps (robust to short interference)."""
    times = sorted(result["step_seconds"][warmup:]) or sorted(result["step_seconds"])
    return tokens_per_step / times[len(times) // 2]


def crossing(curve: list[dict[str, float]], target: float, key: str) -> float | None:
    """Where (in `key`: "step" or "seconds") the eval curve first reaches target, linearly
    interpolated between eval points (from 0 at the start)."""
    previous = {"step": 0.0, "seconds": 0.0, "eval_loss": math.inf}
    for point in curve:
        if point["eval_loss"] <= target:
            if not math.isfinite(previous["eval_loss"]):
                return point[key]
            drop = previous["eval_loss"] - point["eval_loss"]
            share = (previous["eval_loss"] - target) / drop if drop > 0 else 1.0
            return previous[key] + share * (point[key] - previous[key])
        previous = point
    return None


def final_loss(objective: str, model_dir: str, data_dir: Path, device: str) -> float:
    """The held-out loss of the saved weights, with the same evaluator for every variant."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto: Any = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir).to(device)
    return Evaluator(objective, data_dir, 32)(model, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per variant (default: 400 on CPU, 300 on CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", default="mini", choices=("tiny", "mini", "small", "medium",
                                                           "base"))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 32 on CPU, 128 on CUDA (to keep a GPU busy)")
    parser.add_argument("--compile", action="store_true",
                        help="C variants with torch.compile (off by default: no gain on CPU)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=None, help="default: 10%% of --steps")
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps / 8")
    parser.add_argument("--corpus-mb", type=float, default=12.0,
                        help="megabytes of the English corpus to tokenize")
    parser.add_argument("--objectives", default="clm,mlm",
                        help="clm (GPT-2), mlm (BERT) or both, in the order given")
    parser.add_argument("--variants", default="A,B,C,C-fast,C-tied",
                        help="of A,B,C,C-fast,C-tied (C-fast, C-tied: mlm only)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few steps")
    parser.add_argument("--json", help="also write all figures to this file")
    # Internal: one variant in a subprocess.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--objective", choices=OBJECTIVES, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device cuda, but torch {torch.__version__} sees no CUDA GPU "
                 "(a CPU-only build, or no driver/device); run on a GPU machine or use "
                 "--device cpu")
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.steps = args.steps or 6
        args.eval_every = args.eval_every or 3
        args.corpus_mb = min(args.corpus_mb, 1.0)
    args.steps = args.steps or (300 if args.device == "cuda" else 400)
    args.batch_size = args.batch_size or (128 if args.device == "cuda" else 32)
    args.warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    args.eval_every = args.eval_every or max(1, args.steps // 8)
    objectives = [o for o in args.objectives.split(",") if o]
    chosen = [v for v in args.variants.split(",") if v]
    if set(objectives) - set(OBJECTIVES):
        sys.exit(f"error: unknown objectives {sorted(set(objectives) - set(OBJECTIVES))}; "
                 f"choose from {OBJECTIVES}")
    if set(chosen) - set(VARIANTS["mlm"]):
        sys.exit(f"error: unknown variants {sorted(set(chosen) - set(VARIANTS['mlm']))}; "
                 f"choose from {VARIANTS['mlm']}")

    with tempfile.TemporaryDirectory(prefix="cloze-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        corpus = slice_corpus(args.corpus_mb, work / "corpus.txt")
        for objective in objectives:
            variants = [v for v in VARIANTS[objective] if v in chosen]
            bench_objective(args, objective, variants, corpus, work)
        print(f"total bench time {time.perf_counter() - t0:.0f} s")


def bench_objective(args: argparse.Namespace, objective: str, variants: list[str],
                    corpus: Path, work: Path) -> None:
    """Prepare the data once, train every variant (then a repeat pass), print the table."""
    warmup_steps = 2 if args.quick else 10  # excluded from tokens/s
    tokens_per_step = args.batch_size * SEQUENCE_LENGTH
    t0 = time.perf_counter()
    data_dir = work / f"data-{objective}"
    spec = job_spec(args, objective)
    meta = prepare_data(spec, str(corpus), "txt", str(data_dir), QuietReporter())
    shape = spec.model.shape()
    name = f"{MODEL_NAME[objective]}-{args.size}"
    print(f"== {objective}: {name} ({shape.layers} layers, hidden {shape.hidden}, "
          f"{shape.heads} heads, FFN {shape.intermediate})")
    print(f"data: {args.corpus_mb:g} MB of {CORPUS.name} -> {meta['train_blocks']} train / "
          f"{meta['validation_blocks']} held-out blocks of {SEQUENCE_LENGTH} tokens, "
          f"{spec.tokenizer.type} vocab {meta['vocab_size']} (data_key {data_key(spec)}, "
          f"{time.perf_counter() - t0:.0f} s, once for all variants)")
    print(f"batch {args.batch_size} x {SEQUENCE_LENGTH}, {args.steps} steps, lr "
          f"{args.learning_rate:g}, warmup {args.warmup}, linear decay, weight decay 0.01; "
          f"eval every {args.eval_every} steps on up to {EVAL_BLOCKS} held-out blocks; "
          f"device {args.device}; cores {os.cpu_count()}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        results[variant] = launch(args, objective, variant, data_dir, work, args.steps,
                                  args.eval_every)
        r = results[variant]
        print(f"  {variant:6s} done in {r['wall']:.0f} s (load {r['load'][0]:.1f} -> "
              f"{r['load'][1]:.1f})", flush=True)
    # A second, shorter throughput pass in reverse order, so that interference from other
    # work on the machine is unlikely to hit one variant only; the better figure counts.
    repeat: dict[str, dict[str, Any]] = {}
    if not args.quick:
        for variant in reversed(variants):
            repeat[variant] = launch(args, objective, variant, data_dir, work, 40, 10**9)
    for variant in variants:
        r = results[variant]
        r["final_loss"] = final_loss(objective, r["model_dir"], data_dir, args.device)
        r["tps_main"] = tokens_per_second(r, warmup_steps, tokens_per_step)
        r["tps_repeat"] = (tokens_per_second(repeat[variant], warmup_steps, tokens_per_step)
                           if variant in repeat else None)
        r["tps"] = max(r["tps_main"], r["tps_repeat"] or 0.0)
    report(args, objective, variants, results, tokens_per_step, data_dir)
    if args.json:
        path = Path(args.json)
        everything = json.loads(path.read_text()) if path.exists() else {}
        everything[objective] = results
        path.write_text(json.dumps(everything, indent=2))
    print(f"{objective} bench time {time.perf_counter() - t0:.0f} s", flush=True)


def report(args: argparse.Namespace, objective: str, variants: list[str],
           results: dict[str, dict[str, Any]], tokens_per_step: int, data_dir: Path) -> None:
    """Print the table, the ratios and the time-to-loss figures."""
    cuda = args.device == "cuda"
    mfu_per_tps = None
    if cuda:
        tokenizer = load_data_tokenizer(data_dir)
        model = build_model(job_spec(args, objective).model, objective, tokenizer, seed=SEED,
                            attention="sdpa", dropout=0.0)
        peak = peak_flops(torch.device("cuda", torch.cuda.current_device()))
        if peak:
            mfu_per_tps = flops_per_token(model, SEQUENCE_LENGTH) / peak
    memory = "peak GPU MiB" if cuda else "peak RSS MiB"
    print()
    header = f"{'':7s}{'tokens/s':>10s}{'(main/repeat)':>17s}{memory:>14s}"
    header += f"{'MFU':>7s}" if cuda else ""
    print(header + f"{'held-out loss':>15s}  what")
    for v in variants:
        r = results[v]
        repeat = f"{r['tps_repeat']:.0f}" if r["tps_repeat"] else "-"
        line = f"{v:7s}{r['tps']:10.0f}{r['tps_main']:>10.0f}/{repeat:<6s}{r['peak_mib']:14.0f}"
        if cuda:
            line += f"{r['tps'] * mfu_per_tps:7.1%}" if mfu_per_tps else f"{'?':>7s}"
        print(line + f"{r['final_loss']:15.4f}  {DESCRIPTIONS[objective][v]}")
    blocks = Evaluator(objective, data_dir, 32).blocks
    how = ("15% masking, seed fixed" if objective == "mlm"
           else "mean next-token cross-entropy")
    print(f"(held-out loss after {args.steps} steps: one evaluator on the saved weights, fp32, "
          f"{how}, {blocks} held-out blocks)")
    print()
    for c in (v for v in variants if v.startswith("C")):
        for base in ("A", "B"):
            if base in results:
                ratio = results[c]["tps"] / results[base]["tps"]
                print(f"{c}/{base} tokens/s: {ratio:.2f}x")
        if "B" in results:
            delta = results[c]["final_loss"] - results["B"]["final_loss"]
            print(f"{c} held-out loss - B's at step {args.steps}: {delta:+.4f}")
    if "B" not in results:
        return
    target = results["B"]["final_loss"]
    print()
    print(f"time to B's final held-out loss {target:.4f} (evals every {args.eval_every} steps, "
          "linear in between): the crossing step x the median step time above, and as "
          "measured (the sum of step times, so slowed by any other load on the machine):")
    b_steps = crossing(results["B"]["curve"], target, "step")
    b_time = b_steps * tokens_per_step / results["B"]["tps"] if b_steps else None
    for v in variants:
        r = results[v]
        steps = crossing(r["curve"], target, "step")
        if steps is None:
            print(f"  {v:7s} not reached in {args.steps} steps")
            continue
        seconds = steps * tokens_per_step / r["tps"]
        share = f" = {seconds / b_time:.2f} x B's" if b_time else ""
        measured = crossing(r["curve"], target, "seconds")
        print(f"  {v:7s} step {steps:6.1f}: {seconds:7.1f} s{share}  (measured {measured:.1f} s)")
    print()


if __name__ == "__main__":
    main()
