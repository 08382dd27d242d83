#!/usr/bin/env bash
# GPU checks in one command, for a machine with an NVIDIA GPU whose python3 already has torch and
# torchvision (but maybe not the web/database stack): installs the wheels from .whl/ if present
# (fetch them here with ../shared/tools/gpu-wheels), runs the tests whose code paths change on CUDA,
# then the engine's epoch timings on the GPU. Output lines go to stdout and, if set, $OUT/gpu.log.
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
  python3 -m pytest -q -p no:cacheprovider tests/test_e2e.py tests/test_engine.py tests/test_store.py tests/test_workers.py \
    tests/test_recipes_engine.py tests/test_recipes_api.py
  python3 bench/epoch_time.py --device cuda --epochs 4
  python3 bench/epoch_time.py --device cpu --epochs 2
} 2>&1 | tee "$log"
