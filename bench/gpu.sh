#!/usr/bin/env bash
# GPU checks in one command, for a machine with an NVIDIA GPU whose python3 already has torch and
# torchvision (but maybe not the web/database stack): installs the wheels from .whl/ if present
# (fetch them here with ../shared/tools/gpu-wheels), runs the engine's tests (CUDA graphs against eager steps),
# the throughput and time-to-accuracy benchmarks on the GPU, the tests whose code paths change on CUDA, the
# throughput on the full Fashion-MNIST when its four files are in var/data/fashion-mnist/ (carry that folder; the
# working tree bundles only 10k-image splits), and last the throughput with `compile: true`. Each step has a time
# limit, so that one that hangs leaves the rest their time. Output goes to stdout and, if set, $OUT/gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp}/gpu.log
{
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  export PYTHONUNBUFFERED=1
  step() { local limit=$1; shift; echo "## $*"; timeout "$limit" "$@" || echo "## exit $? after at most ${limit}s: $*"; }
  step 180 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py  # its two compile tests: ~90 s here
  step 200 python3 -m bench.train_throughput --device cuda --epochs 3 --rounds 2
  step 45 python3 -m bench.time_to_accuracy --device cuda --runs 3
  step 45 python3 -m bench.time_to_accuracy --device cuda --runs 3 --precision fp32
  step 45 python3 -m bench.time_to_accuracy --device cuda --runs 3 --no-cuda-graphs
  step 120 python3 -m pytest -q -p no:cacheprovider tests/test_e2e.py tests/test_recipes_engine.py \
    tests/test_workers.py -k "not postgresql"
  if compgen -G "var/data/fashion-mnist/train-images-idx3-ubyte*" >/dev/null; then
    step 240 python3 -m bench.train_throughput --device cuda --epochs 3 --rounds 1 --full
  else
    echo "## no var/data/fashion-mnist/: the full Fashion-MNIST throughput skipped"
  fi
  step 120 python3 -m bench.train_throughput --device cuda --epochs 2 --rounds 1 --compile
} 2>&1 | tee "$log"
