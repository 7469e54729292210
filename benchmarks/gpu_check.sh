#!/usr/bin/env bash
# One device check: the test suite, then the benchmarks, on a GPU machine, in one call.
#
# Once, on the CPU machine, from the repository root (the folder stays ignored):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     clu==0.0.12 ml_collections
# The device image has jax (CUDA), flax, optax, chex, orbax-checkpoint, safetensors, rich,
# matplotlib, hypothesis, pytest, pytest-timeout, pytest-xdist and torch; clu travels as a wheel.
# Run (carry [".whl"]): bash benchmarks/gpu_check.sh   (about 8 minutes on an H200)
# Everything it prints also lands in $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
( nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true ) | tee "$OUT/info.txt"
$PY -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, jax.devices())" 2>&1 | tee -a "$OUT/info.txt"
el pytest
# the tests first, in 8 workers that share the GPU (no preallocation)
PYTREEPARAMS_TEST_XLA_FLAGS= XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${PYTEST_S:-200} $PY -m pytest -v -rfE -n 8 --timeout 120 > "$OUT/pytest_full.txt" 2>&1
grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest_full.txt" | tail -60
( cd benchmarks
  el summary; timeout 120 $PY summary.py --rounds 5 2>&1 | tee "$OUT/summary.txt"
  el device-path; timeout 50 $PY summary.py --device-path --rounds 3 --trees "resnet50,gpt2,5000 leaves" 2>&1 | tee "$OUT/device_path.txt"
  el grads; timeout 140 $PY grads.py --rounds 11 2>&1 | tee "$OUT/grads.txt" )
el done
