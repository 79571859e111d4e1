#!/usr/bin/env bash
# The accelerator figures of results/benchmarks.md in one call (about 6-8 minutes on one GPU):
# ResNet-50 bf16 images/s and MFU per variant, the compiled step's memory per batch (the
# microbatch table), checkpoint blocking time, and the loop's efficiency on real JPEGs.
#
#   bash scripts/device_benchmarks.sh            # writes logs and JSON under ${OUT:-runs/device}
#
# On the device tool's GPU image (Python 3.12, no dm-haiku, ml_collections, tensorboardX,
# grain), carry those as wheels in .whl/ (ignored by git), made once here with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#     dm-haiku==0.0.17 jmp ml-collections tensorboardX grain array-record portpicker
# and run it as: run(command="bash scripts/device_benchmarks.sh", carry=[".whl"], timeout_s=590).
# Sizes can be overridden: BATCH (per-device ResNet-50 batch, 128), MEMORY_BATCHES
# ("64,128,256"), LOOP_ARGS, RESNET_TIMEOUT (240 s: it compiles 8 variants of ResNet-50),
# STEP_TIMEOUT (100 s for each of the others): 9 minutes at most in all.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/device}
mkdir -p "$out"
if ! python3 -c "import haiku, ml_collections" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
platform=$(python3 -c "import jax; print(jax.devices()[0].platform)")
echo "platform: $platform; $(python3 -c 'import jax; print(jax.devices())')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

bench() {   # bench NAME SECONDS SCRIPT ARGS...: a log and a JSON each; a failure (or the time
            # limit) does not stop the rest
  local name=$1 seconds=$2 script=$3
  shift 3
  echo "== $name: $script $*"
  timeout "$seconds" python3 "scripts/$script" "$@" --out "$out/$name.json" \
    2>&1 | tee "$out/$name.log" | grep -v "^WARNING\|^I[0-9]\|^W[0-9]"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

bench resnet "${RESNET_TIMEOUT:-240}" bench_resnet.py --batch "${BATCH:-128}" --image_size 224 --steps 10 --rounds 3
bench memory "${STEP_TIMEOUT:-100}" bench_memory.py --batches "${MEMORY_BATCHES:-64,128,256}"
echo "== checkpoint: bench_checkpoint.py"
timeout "${STEP_TIMEOUT:-100}" python3 scripts/bench_checkpoint.py --workdir /tmp 2>&1 \
  | tee "$out/checkpoint.log" | grep -v "^WARNING"
# shellcheck disable=SC2086  # LOOP_ARGS is a list of flags
JAX_PLATFORMS=$platform bench loop "${STEP_TIMEOUT:-100}" bench_loop.py ${LOOP_ARGS:---steps 60 --batch 256 --image_size 224 --num_jpegs 512 --workers 12}
