"""MFU of the Cloze engine on one CUDA device: BERT-base by masked LM and GPT-2 small (our
"base" size: 12 layers, hidden 768) by causal LM, as a job would train them (bf16 autocast,
SDPA attention, fused AdamW), with and without torch.compile.

For each run it prints tokens/s, step time and MFU: achieved training FLOP/s (the engine's
count, architectures.flops_per_token: 6 x non-embedding parameters + attention) over the
device's peak dense bf16 FLOP/s (architectures.PEAK_BF16_FLOPS). The first --warmup-steps
(compilation, allocator warm-up) are left out of the figures.

    python bench/gpu.py                    # on a GPU: both models, compile off and on
    python bench/gpu.py --compile on --steps 100
    python bench/gpu.py --cpu-smoke        # tiny shapes, a few steps on the CPU: proves the
                                           # script runs; reports no MFU (no CPU peak)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workers.engine.pretrain as engine_pretrain  # noqa: E402
from jobspec import PretrainSpec, parse_spec  # noqa: E402
from workers.engine import prepare_data, run_pretraining  # noqa: E402
from workers.engine.architectures import flops_per_token, peak_flops  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "en-pretrain.txt.gz"


@dataclass(frozen=True)
class Shape:
    """One benchmark row's model and batch."""

    name: str
    objective: str
    architecture: str
    size: str
    tokenizer: str
    vocab_size: int
    sequence_length: int
    batch_size: int


# The published shapes: BERT-base (30,522 WordPiece entries, 512 positions) and GPT-2 small
# (50,257 byte-level BPE entries, 1,024 positions); ~16k tokens a step each. A tokenizer
# trained on a small corpus may stop short of the vocabulary asked for: the table says what
# it became (the FLOP count is of the model as built).
GPU_SHAPES = (
    Shape("BERT-base", "mlm", "bert", "base", "wordpiece", 30_522, 512, 32),
    Shape("GPT-2 small", "clm", "gpt2", "base", "bpe", 50_257, 1024, 16),
)
# --cpu-smoke: the same code path at shapes a 2-core CPU runs in seconds.
CPU_SHAPES = (
    Shape("BERT-tiny", "mlm", "bert", "tiny", "wordpiece", 2_000, 64, 8),
    Shape("GPT-2 tiny", "clm", "gpt2", "tiny", "bpe", 2_000, 64, 8),
)


class Collect:
    """A Reporter that keeps the engine's log points (tokens/s, and MFU on a known GPU)."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []

    def event(self, level: str, message: str) -> None:
        if level != "info":
            print(f"  [{level}] {message}", file=sys.stderr)

    def log(self, point: dict[str, Any]) -> None:
        self.points.append(point)

    def eval(self, point: dict[str, Any]) -> None:
        pass

    def checkpoint(self, step: int, directory: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def spec_for(shape: Shape, args: argparse.Namespace, compile_: bool) -> PretrainSpec:
    spec = parse_spec({
        "type": "pretrain", "objective": shape.objective, "dataset_id": "bench",
        "model": {"architecture": shape.architecture, "size": shape.size,
                  "max_position_embeddings": max(shape.sequence_length, 512)},
        "tokenizer": {"type": shape.tokenizer, "vocab_size": shape.vocab_size},
        "hyperparameters": {
            "max_steps": args.steps, "batch_size": shape.batch_size,
            "sequence_length": shape.sequence_length, "warmup_steps": 0,
            "learning_rate": 1e-4, "seed": 0,
            # What a job on a GPU gets by default, said out loud: bf16, SDPA, fused AdamW.
            "precision": "bf16" if args.device == "cuda" else "auto",
            "attention": "sdpa", "optimizer_impl": "fused" if args.device == "cuda" else "auto",
            "compile": compile_},
        # Logged every 10 steps: one host sync per log point, as a job runs (not per step).
        "log_every": args.log_every, "eval_every": 10**9, "checkpoint_every": 10**9,
    })
    assert isinstance(spec, PretrainSpec)
    return spec


@dataclass
class Row:
    name: str
    compile: bool
    parameters: int
    vocab: int
    tokens_per_step: int
    tokens_per_second: float
    step_seconds: float
    tflops: float
    mfu: float | None
    peak_memory_gib: float | None


def measure(shape: Shape, args: argparse.Namespace, compile_: bool, data: Path,
            work: Path) -> Row:
    spec = spec_for(shape, args, compile_)
    holder: dict[str, torch.nn.Module] = {}
    build = engine_pretrain.build_model

    def capture(*a: Any, **kw: Any) -> torch.nn.Module:
        holder["model"] = build(*a, **kw)
        return holder["model"]

    reporter = Collect()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with mock.patch.object(engine_pretrain, "build_model", capture):
        run_pretraining(spec, str(data), str(work), reporter, device=args.device)
    model = holder["model"]
    # Log points after the warm-up steps; each is a mean over its log_every steps.
    kept = [p for p in reporter.points if p["step"] > args.warmup_steps] or reporter.points[-1:]
    tokens_per_step = shape.batch_size * shape.sequence_length
    rate = statistics.fmean(p["tokens_per_second"] for p in kept)
    flops = flops_per_token(model, shape.sequence_length)
    peak = peak_flops(torch.device(args.device)) if args.device == "cuda" else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    return Row(shape.name, compile_, sum(p.numel() for p in model.parameters()),
               model.get_input_embeddings().weight.shape[0], tokens_per_step, rate,
               tokens_per_step / rate, rate * flops / 1e12,
               rate * flops / peak if peak else None, memory)


def table(rows: list[Row], device_name: str, peak: float | None) -> str:
    lines = [f"device: {device_name}; peak dense bf16: "
             + (f"{peak / 1e12:,.0f} TFLOP/s" if peak else "unknown (MFU not reported)"),
             "| model | compile | params | vocab | tokens/step | tokens/s | step (ms) "
             "| TFLOP/s | MFU | peak mem (GiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        mem = f"{r.peak_memory_gib:.1f}" if r.peak_memory_gib is not None else "n/a"
        lines.append(f"| {r.name} | {'on' if r.compile else 'off'} | {r.parameters / 1e6:.1f}M "
                     f"| {r.vocab:,} | {r.tokens_per_step:,} | {r.tokens_per_second:,.0f} "
                     f"| {r.step_seconds * 1e3:.1f} | {r.tflops:.2f} | {mfu} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes and a few steps on the CPU; no MFU")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default "
                        "60 on a GPU, 6 with --cpu-smoke)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps left out of the figures (default 20; 2 for the smoke)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default=None,
                        help="torch.compile (default both on a GPU, off for the smoke)")
    parser.add_argument("--models", default="mlm,clm", help="mlm, clm or both (mlm,clm)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="text to train on")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA device; this benchmark measures MFU on a GPU "
                 "(--cpu-smoke runs it at tiny shapes on the CPU, without MFU)")
    args.device = "cpu" if smoke else "cuda"
    args.steps = args.steps or (6 if smoke else 60)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else \
        (2 if smoke else 20)
    args.log_every = 1 if smoke else 10
    if args.steps <= args.warmup_steps:
        sys.exit("error: --steps must exceed --warmup-steps")
    modes = {"off": [False], "on": [True], "both": [False, True]}[
        args.compile or ("off" if smoke else "both")]
    objectives = {o.strip() for o in args.models.split(",")}
    shapes = [s for s in (CPU_SHAPES if smoke else GPU_SHAPES) if s.objective in objectives]
    device_name = torch.cuda.get_device_name() if not smoke else "cpu (smoke: shapes too " \
        "small to mean anything; no MFU without a peak to compare with)"
    peak = None if smoke else peak_flops(torch.device("cuda"))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cloze-bench-gpu-") as tmp:
        for shape in shapes:
            data = Path(tmp) / f"data-{shape.objective}"
            t0 = time.perf_counter()
            fmt = "txt.gz" if args.corpus.suffix == ".gz" else "txt"
            prepare_data(spec_for(shape, args, False), str(args.corpus), fmt, str(data),
                         Collect())
            print(f"{shape.name}: data prepared in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            for compile_ in modes:
                t0 = time.perf_counter()
                rows.append(measure(shape, args, compile_, data,
                                    Path(tmp) / f"run-{shape.objective}-{compile_}"))
                print(f"{shape.name} compile={'on' if compile_ else 'off'}: "
                      f"{args.steps} steps in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
    print(table(rows, device_name, peak))


if __name__ == "__main__":
    main()
