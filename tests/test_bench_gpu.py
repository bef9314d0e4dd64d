"""bench/gpu.py runs (at tiny shapes on the CPU) and never claims an MFU without a GPU."""

import subprocess
import sys

import pytest
import torch

from tests.stack import ROOT

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cpu_smoke_prints_a_row_per_model_and_no_mfu():
    done = _bench("--cpu-smoke", "--steps", "3", "--warmup-steps", "1")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["BERT-tiny", "GPT-2 tiny"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[5].replace(",", "")) > 0  # tokens/s
        assert cells[8] == "n/a"  # MFU: a CPU has no peak in the table to compare with
    assert "MFU not reported" in done.stdout


def test_without_a_gpu_it_says_so_instead_of_measuring_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = _bench("--models", "mlm")
    assert done.returncode != 0 and "no CUDA device" in done.stderr
