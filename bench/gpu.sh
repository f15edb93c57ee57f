#!/usr/bin/env bash
# The GPU checks in one script, for a lent GPU machine (CI never has one).
#
#   bash bench/gpu.sh --prepare    # here, with network: wheels + the anchor script into .gpu/
#   bash bench/gpu.sh --dry-run    # print what would run (CI runs this)
#   bash bench/gpu.sh              # on the GPU machine, from the repository root (carry .gpu)
#
# What it runs, each under its own timeout so the whole script ends in under 8 minutes:
#   1. bench/train_step.py --variant base --batch 128 --device cuda --compile, side by side
#      with terratorch's TerraMind (headline train_step_speedup_vs_terratorch, and MFU);
#   2. bench/encode.py on CUDA (the pre-tokenization job, compiled tokenizers);
#   3. bench/tokenizers.py on a toy corpus on CUDA (the tokenizer training's CUDA/bf16 path);
#   4. the tests marked gpu (pytest -m gpu).
# Each step's last lines go to $OUT/gpu_summary.txt (or bench_out/gpu/ without $OUT), and the
# headline figures are printed again at the end. A failing step is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=run
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--dry-run|--prepare]" >&2; exit 2 ;;
esac

PY=${PY:-python3}
GPU_DIR=.gpu
RESULTS=${OUT:-bench_out/gpu}
TT_WHEEL_GLOB="$GPU_DIR/wheels/terratorch-1.2.11-*.whl"
# Packages the GPU image lacks (KINDS.md lists what it has); py3.12 manylinux wheels.
WHEELS="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 terratorch==1.2.11"

if [ "$MODE" = prepare ]; then
  mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/anchors"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  cp ../shared/anchors/terratorch_step.py ../shared/anchors/lean_step.py "$GPU_DIR/anchors/"
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$GPU_DIR/wheels" "$w" || exit 1
  done
  du -sh "$GPU_DIR"
  echo "prepared: carry .gpu when running bench/gpu.sh on the GPU machine"
  exit 0
fi

run() {  # run NAME SECONDS CMD...: one step under its timeout, its tail kept in the summary
  local name=$1 secs=$2; shift 2
  if [ "$MODE" = dry ]; then
    echo "[$name] timeout ${secs}s: $*"
    return 0
  fi
  echo "=== $name"
  local log="$RESULTS/$name.log"
  timeout "$secs" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  { echo "--- $name (rc $rc)"; tail -n 3 "$log"; } >> "$RESULTS/gpu_summary.txt"
}

if [ "$MODE" = run ]; then
  mkdir -p "$RESULTS"
  : > "$RESULTS/gpu_summary.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 1
  if compgen -G "$GPU_DIR/wheels/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$GPU_DIR"/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # The stages import as terraloom.<stage>: a link tree spells those names without installing.
  mkdir -p build/gpu/terraloom
  for s in schemas storage render pipeline tokenize_jobs model orchestration; do
    [ -d "$s" ] && ln -sfn "../../../$s" "build/gpu/terraloom/$s"
  done
  export PYTHONPATH=$PWD/build/gpu:$PYTHONPATH
  export TERRALOOM_ANCHORS=$PWD/$GPU_DIR/anchors PYTHONUNBUFFERED=1
fi

TT=$(compgen -G "$TT_WHEEL_GLOB" | head -n 1)
run train_step 210 $PY bench/train_step.py --variant base --batch 128 --device cuda --compile \
  --tt "${TT:-$TT_WHEEL_GLOB}"
run encode 80 $PY bench/encode.py --device cuda --compile --n-samples 64 --only encode
run tokenizers 80 $PY bench/tokenizers.py --toy 96 --device cuda --steps 200 \
  --modalities S2L2A,DEM --workdir "$RESULTS/tokenizers"
run gpu_tests 60 $PY -m pytest -q -m gpu -p no:cacheprovider tests

if [ "$MODE" = run ]; then
  echo "=== headline figures"
  grep -hE "^[a-z_]+=[0-9.]+|mfu|MFU|passed|failed" "$RESULTS"/*.log | tail -n 20
fi
