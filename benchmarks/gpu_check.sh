#!/usr/bin/env bash
# The GPU check (issue 14): the paper-size model through the pipeline's stages on one GPU, in bf16,
# under DeepSpeed ZeRO-2 and DDP, with MFU, a live teacher, the Ray trial function and the evaluation.
# What it measures and how: benchmarks/gpu_check.py; how to run it with the device tool: benchmarks/README.md.
#
#   benchmarks/gpu_check.sh --fetch-wheels   # here, once: what the GPU machine lacks, into .whl/ (~7 MB)
#   benchmarks/gpu_check.sh                  # on the GPU machine (carry .whl): installs them, runs, < 5 min
#   benchmarks/gpu_check.sh --cpu-smoke      # anywhere: the same path on the CPU with the tiny model
#
# Figures go to $OUT (gpu_check.json, gpu_check.md, and benchmarks/RESULTS.md with them at the top);
# without $OUT, to ./gpu-check-out. MLflow is kept out: tracking is off and MLflow is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
OUT=${OUT:-$PWD/gpu-check-out}
WHEELS=.whl
PYTHON=${PYTHON:-python3}
# what the GPU machine's image lacks (torch, transformers, numpy, scipy, psutil, yaml, ninja... are there),
# at the versions the CPU suite runs; DeepSpeed only ships a source archive
PINS="soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5"
DEEPSPEED=deepspeed==0.19.8

case "$MODE" in
  --fetch-wheels)
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $PINS
    "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$WHEELS" "$DEEPSPEED"
    du -sh "$WHEELS"
    exit 0 ;;
  --cpu-smoke)
    mkdir -p "$OUT"
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_check.py --cpu-smoke --out "$OUT" ;;
  gpu)
    "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" \
      || { echo "no CUDA GPU here: benchmarks/gpu_check.sh --cpu-smoke runs the same path on the CPU" >&2; exit 2; }
    ls "$WHEELS"/deepspeed-*.tar.gz >/dev/null 2>&1 \
      || { echo "no $WHEELS/: run benchmarks/gpu_check.sh --fetch-wheels here first and carry $WHEELS" >&2; exit 2; }
    SITE=/tmp/gpu-check-site
    started=$(date +%s)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    # DeepSpeed's setup imports torch: build it against the machine's own torch (no build isolation), no ops ahead
    PYTHONPATH="$SITE" DS_BUILD_OPS=0 "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
      --target "$SITE" "$WHEELS"/deepspeed-*.tar.gz
    echo "wheels installed in $(( $(date +%s) - started )) s"
    export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 TORCH_EXTENSIONS_DIR=/tmp/torch-extensions
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # the work folder (a 1.3 GB stand-in, checkpoints) stays out of $OUT, which comes back
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_check.py --out "$OUT" \
      --work /tmp/gpu-check-work --results benchmarks/RESULTS.md
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md" ;;
  *)
    echo "usage: benchmarks/gpu_check.sh [--fetch-wheels | --cpu-smoke]" >&2
    exit 2 ;;
esac
