#!/usr/bin/env bash
# Everything this project checks only on CUDA, in one script for one GPU (about 8 minutes on an H100):
#   1. the tests marked `cuda` (tests/test_cuda.py): Wanda on the tiny model of every family in float32,
#      bfloat16 and float16 on the GPU, masks equal to CPU float32's except at near-ties; offload equal to
#      everything on the GPU, with a peak of about one block plus the activations;
#   2. bench/bench_scale.py: LLaVA-NeXT-8B's decoder, 128 paper-shaped samples, bfloat16: the dense forward,
#      Wanda and ATV on all 32 blocks; SparseGPT and TAMP (minutes per block of Python-driven kernels:
#      SparseGPT's column loop, TAMP's greedy picks) on 4 blocks, their full run extrapolated per block;
#   3. bench/bench_semi_structured.py: 2:4 semi-structured prefill on 8B-shaped linears and a 2:4 tiny checkpoint;
#   4. bench/bench_eval.py: items per second of task scoring at batch 1, 4, 16 and auto (goal: 5x batch 1 at 16 on
#      the generation task), every batched run's scores checked against batch 1's.
# Results go to results/bench/*-gpu.json (OUT=folder to change). `--dry-run` runs the same steps on the CPU at
# tiny shapes into a temporary folder (CI runs it so that the script cannot rot); the tests themselves run on
# the CPU in `make test`, so the dry run only checks that pytest selects them.
#
#   bash bench/gpu_suite.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; fi
start=$SECONDS
if [ $dry = 1 ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  "$PY" -m pytest -q -m cuda --collect-only tests/test_cuda.py | tail -1
  "$PY" bench/bench_scale.py --dry-run --blocks 2 --nsamples 2 --methods dense,wanda,atv --no-flops \
    --out "$out/scale-gpu.json"
  "$PY" bench/bench_scale.py --dry-run --blocks 1 --nsamples 2 --methods dense,wanda,sparsegpt,tamp \
    --out "$out/scale-gpu-4-blocks.json"
  "$PY" bench/bench_semi_structured.py --dry-run --out "$out/semi-structured-gpu.json"
  "$PY" bench/bench_eval.py --dry-run --out "$out/eval-batching-gpu.json"
  test -s "$out/scale-gpu.json" && test -s "$out/scale-gpu-4-blocks.json" && test -s "$out/semi-structured-gpu.json"
  test -s "$out/eval-batching-gpu.json"
  echo "gpu suite dry run: $((SECONDS - start)) s"
  exit 0
fi
out=${OUT:-results/bench}
mkdir -p "$out"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PROBE_TEST_DEVICE=cuda "$PY" -m pytest -q -m cuda tests/test_cuda.py --junitxml="$out/cuda-tests.xml"
echo "cuda tests: $((SECONDS - start)) s"
"$PY" bench/bench_scale.py --device cuda --dtype bfloat16 --blocks 32 --nsamples 128 \
  --methods dense,wanda,atv --no-flops --out "$out/scale-gpu.json"
echo "bench_scale, 32 blocks: $((SECONDS - start)) s"
"$PY" bench/bench_scale.py --device cuda --dtype bfloat16 --blocks 4 --nsamples 128 \
  --methods dense,wanda,sparsegpt,tamp --no-flops --out "$out/scale-gpu-4-blocks.json"
echo "bench_scale, 4 blocks: $((SECONDS - start)) s"
"$PY" bench/bench_semi_structured.py --device cuda --dtype float16 --out "$out/semi-structured-gpu.json"
echo "bench_semi_structured: $((SECONDS - start)) s"
"$PY" bench/bench_eval.py --device cuda --dtype bfloat16 --limit 64 --out "$out/eval-batching-gpu.json"
echo "gpu suite: $((SECONDS - start)) s"
