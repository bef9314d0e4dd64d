#!/usr/bin/env bash
# Run ON the device machine (a lent GPU), after bench/device_prepare.sh here:
#   run(command="bash bench/device_run.sh gpu", carry=[".whl", ".data"], timeout_s=480)
#   run(command="bash bench/device_run.sh quality", carry=[".whl", ".data"], timeout_s=590)
# gpu: bench/gpu.py's MFU table (issue 12); quality: bench/finetune_quality.py with a
# pretraining long enough to leave the MLM plateau (issue 8). Output goes to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CLOZE_BENCH_DATA=$PWD/.data
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu-name.txt"
case "${1:-quality}" in
  gpu)
    python3 bench/gpu.py 2>&1 | tee "$OUT/gpu.txt" ;;
  quality)
    # finetune_quality.py is a client of the service since 2026-12-08: it starts `cloze up`,
    # which needs the service's packages (fastapi, celery, sqlalchemy, ...), and whose one
    # worker is a CPU worker (a GPU needs `cloze worker --device cuda` beside it, or --url
    # to a service that has one). device_prepare.sh brings none of that yet: check first,
    # and say so rather than fail halfway.
    python3 -c "import fastapi, celery, sqlalchemy, alembic, typer, optuna" 2> "$OUT/quality.log" || {
      echo "the service's packages are not on this machine: extend bench/device_prepare.sh" >&2
      exit 3; }
    python3 bench/finetune_quality.py --home /tmp/ftq --pretrain-steps "${STEPS:-20000}" \
      --json "$OUT/quality.json" 2>> "$OUT/quality.log" | tee "$OUT/quality.txt" ;;
  *) echo "usage: device_run.sh gpu|quality" >&2; exit 2 ;;
esac
