#!/usr/bin/env bash
# Device check (run through the workplace's GPU tool): the end-to-end benchmark on CUDA.
# Expects wheels for packages the GPU image lacks in .whl/ (see bench/gpu_check.sh).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LINE_CACHE=/tmp/line-cache PYTHONUNBUFFERED=1
export LINE_BENCH_RESULTS=${OUT:-bench-results} LINE_BENCH_DEVICE=cuda
python3 -m bench.e2e_bench 2>&1 | grep -vE "Loading|Writing" | tee "$LINE_BENCH_RESULTS/gpu-e2e.txt"
