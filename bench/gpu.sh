#!/usr/bin/env bash
# GPU checks in one command, for a machine with an NVIDIA GPU whose python3 already has torch and
# torchvision (but maybe not the web/database stack): installs the wheels from .whl/ if present
# (fetch them here with ../shared/tools/gpu-wheels), runs the tests whose code paths change on CUDA,
# then the throughput and time-to-accuracy benchmarks on the GPU. Output goes to stdout and, if set, $OUT/gpu.log.
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
  python3 -m pytest -q -p no:cacheprovider tests/test_e2e.py tests/test_engine.py tests/test_recipes_engine.py \
    tests/test_workers.py -k "not postgresql"
  python3 -m bench.train_throughput --device cuda --epochs 3 --rounds 2 --compile
  python3 -m bench.time_to_accuracy --device cuda --runs 3
  python3 -m bench.time_to_accuracy --device cuda --runs 3 --precision fp32
} 2>&1 | tee "$log"
