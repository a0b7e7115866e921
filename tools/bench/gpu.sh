#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md on one lent GPU, in under 8 minutes (each step has its own timeout):
#
#     bash tools/bench/gpu.sh [OUT_DIR]          # default OUT_DIR: $OUT, else bench_gpu/
#
# 1) the CUDA tests of the amp key and the device stage (CUDA AMP as before: bf16 where the GPU has it, else
#    fp16 + GradScaler; the compiled device stage on the GPU equals the CPU's)
# 2) tools/bench/augment.py: the data pipeline per CPU core, (e) the device stage on the GPU, compiled
#    (default) and the eager ops (--fused off)
# 3) tools/bench/train.py: ResNet-50 at 224 px and the CIFAR proxy, batch 32 x 4 views: fp32, bf16,
#    channels_last, per-view vs joint BN, data wait behind 14 loader workers
# Writes at most 8 files to OUT_DIR: machine.txt, tests.txt, bench_augment{,_eager}.{txt,json},
# bench_train.{txt,json}.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-bench_gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E "^Model name|^CPU\(s\)|^L2|^L3"; $PY -c "import torch; print('torch', torch.__version__)"
} 2>&1 | tee "$OUT_DIR/machine.txt"

timeout 100 $PY -m pytest -q -x -p no:cacheprovider tests/pretrain/test_amp.py \
    tests/pretrain/test_augment.py::test_cuda_matches_cpu \
    tests/pretrain/test_augment.py::test_cuda_compiled_matches_cpu_eager \
    tests/pretrain/test_engine.py::test_cuda_amp_channels_last_run 2>&1 | tail -15 | tee "$OUT_DIR/tests.txt"

timeout 100 $PY -m tools.bench.augment --rounds 3 --json "$OUT_DIR/bench_augment.json" 2>&1 \
    | grep -v "^W[0-9]" | tee "$OUT_DIR/bench_augment.txt"
timeout 60 $PY -m tools.bench.augment --rounds 1 --fused off --json "$OUT_DIR/bench_augment_eager.json" 2>&1 \
    | grep -v "^W[0-9]" | tee "$OUT_DIR/bench_augment_eager.txt"

timeout 200 $PY -m tools.bench.train --settings paper,proxy --steps 10 --rounds 3 --workers 14 \
    --json "$OUT_DIR/bench_train.json" 2>&1 | grep -v "^W[0-9]" | tee "$OUT_DIR/bench_train.txt"
