#!/usr/bin/env bash
# Device check (run through the workplace's GPU tool): the server benchmark on CUDA.
# Expects wheels for packages the GPU image lacks in .whl/ (diffusers, fastapi, uvicorn, ...).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LINE_CACHE=/tmp/line-cache PYTHONUNBUFFERED=1
export LINE_BENCH_RESULTS=${OUT:-bench-results} LINE_BENCH_DEVICE=cuda
nvidia-smi -L
python3 -c "import torch, diffusers, fastapi; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
python3 -m bench.server_bench 2>&1 | grep -vE "Loading|Writing" | tee "$LINE_BENCH_RESULTS/gpu-64px.txt"
cp "$LINE_BENCH_RESULTS/server.json" "$LINE_BENCH_RESULTS/gpu-64px.json"
LINE_BENCH_SIZE=256 LINE_BENCH_STEPS=4 python3 -m bench.server_bench 2>&1 | grep -vE "Loading|Writing" | tee "$LINE_BENCH_RESULTS/gpu-256px.txt"
cp "$LINE_BENCH_RESULTS/server.json" "$LINE_BENCH_RESULTS/gpu-256px.json"
