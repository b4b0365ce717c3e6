#!/usr/bin/env bash
# The end-to-end benchmark (bench/e2e_bench.py: whole runs through `line serve` against the
# pipeline limit and the raw generator) on a GPU: tiny-sd at 64x64 1 step and at 256x256
# 4 steps, both with torchvision:resnet50:random layer4. Prints the tables and saves
# gpu-e2e-64px.json/.txt and gpu-e2e-256px.json/.txt under $OUT if set, else bench-results/.
# About 3-4 minutes on an H100/H200.
#
#   bench/gpu_e2e.sh                       # on CUDA (run through the workplace's GPU tool)
#   bench/gpu_e2e.sh --device cpu --smoke  # a quick check of the script itself on a CPU
#
# --smoke shrinks every run (smaller images, 1 neuron, one LLM latency, max_batch 8): about
# 2 minutes on 2 CPU cores.
# Packages the GPU image lacks go in .whl/ as wheels (bench/gpu_wheels.sh fetches them; carry
# .whl); they are installed into /tmp/site first.
set -euo pipefail

device=cuda
smoke=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=${2:?--device needs a value (cuda, cuda:1, cpu)}; shift 2 ;;
    --device=*) device=${1#--device=}; shift ;;
    --smoke) smoke=1; shift ;;
    *) echo "usage: bench/gpu_e2e.sh [--device cuda|cpu] [--smoke]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export LINE_CACHE=${LINE_CACHE:-$PWD/bench-results/cache}
results=${OUT:-bench-results}
mkdir -p "$results"

"$PYTHON" - "$device" <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "torchvision", "diffusers", "transformers", "fastapi", "uvicorn",
                       "httpx", "langchain_core", "langgraph", "langchain_openai", "tenacity",
                       "prometheus_client", "typer") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing packages: {', '.join(missing)}; put their wheels in .whl/ "
             "(bench/gpu_wheels.sh) and carry .whl")
import torch
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"--device {device} but torch {torch.__version__} sees no GPU; use --device cpu")
name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
print(f"torch {torch.__version__} on {device} ({name})")
EOF

export LINE_BENCH_DEVICE=$device LINE_BENCH_TARGET=${LINE_BENCH_TARGET:-torchvision:resnet50:random}
if [ "$smoke" = 1 ]; then
  export LINE_BENCH_MAX_BATCH=8 LINE_BENCH_SEQUENTIAL=1
  #      name   size steps latencies neurons
  configs=("64px  32   1     300       1"
           "256px 64   2     300       1")
else
  configs=("64px  64   1     0,300     1,8,64"
           "256px 256  4     300       8,64")
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for config in "${configs[@]}"; do
  read -r name size steps latencies neurons <<<"$config"
  echo "== tiny-sd ${size}x${size}, ${steps} step(s), $LINE_BENCH_TARGET, $device =="
  LINE_BENCH_SIZE=$size LINE_BENCH_STEPS=$steps LINE_BENCH_LATENCIES=$latencies \
    LINE_BENCH_NEURONS=$neurons LINE_BENCH_RESULTS=$scratch \
    "$PYTHON" -m bench.e2e_bench 2>&1 | { grep -vE "Loading|Writing" || true; } \
    | tee "$results/gpu-e2e-$name.txt"
  cp "$scratch/e2e.json" "$results/gpu-e2e-$name.json"
done
echo "saved under $results: gpu-e2e-*.json, gpu-e2e-*.txt"
