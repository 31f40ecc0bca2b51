#!/usr/bin/env bash
# One prepared GPU check (issues 12 and 23), at most 8 minutes on one H100/H200 in all: the GPU tests
# first, then the benchmarks for BENCHMARKS.md, each with its own timeout, and a benchmark starts only if
# its timeout still fits in the 8 minutes (else it is skipped, saying so; run it in the next session).
#   0. `VIEWNETI_TEST_GPU=1 pytest -m gpu` (tests/test_gpu.py): bf16 vs fp32 images, the fast path and
#      torch.compile vs the plain path, the `auto` batch plan on a full-size scene, DataLoader workers on
#      CUDA, DDP on 2 GPUs where there are 2. Their measurements land in OUT as JSON (bf16-vs-fp32.json
#      among them, which used to be a step of its own here);
#   1. compile cache: the same compiled scene in two fresh processes sharing one cache directory
#      (the second's cold run is the warm-start cost every pipeline task pays);
#   2. scene with a reduced view count (8 views x 3 seeds, 30 steps, 768x576; reference timed on 1 image),
#      batch sizes `auto` as users run them (measured against free memory; the JSON's batch_plan);
#   3. fit: 50 mode-5 optimizer steps at 512x384, batch 3, accumulation 3, both as the loss
#      micro-benchmark and through the real train() loop (DataLoader, augmentation, accelerate).
# Full SD 2.1 architecture with random weights, bf16, the production defaults.
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (default outputs/bench/gpu-check; JSON + log land there)
# Exit status: the tests' (0 when they all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/bench/gpu-check}"
mkdir -p "$OUT"
source bench/device_python.sh  # PY, and diffusers/pydantic from the carried .whl where missing
CACHE="$OUT/compile-cache"
COMMON=(--model sd21-random --device cuda --dtype bf16 --out "$OUT")
BUDGET_S=480
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }
fits() {  # fits SECONDS: whether a step with that timeout still ends inside BUDGET_S
  local left=$(( BUDGET_S - ($(date +%s) - start) ))
  if (( $1 > left )); then echo "SKIPPED: needs up to $1 s, $left s of the ${BUDGET_S} s budget left"; return 1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "0/3 GPU tests: VIEWNETI_TEST_GPU=1 pytest -m gpu (tests/test_gpu.py)"
VIEWNETI_TEST_GPU=1 VIEWNETI_TEST_GPU_OUT="$OUT" timeout 260 "$PY" -m pytest tests/test_gpu.py -m gpu -q -rs \
  -p no:cacheprovider --durations=10 --junitxml="$OUT/gpu-tests.xml"
tests_rc=$?
echo "exit $tests_rc (tests)"

step "1/3 compile cache: two fresh processes, one cache dir ($CACHE)"
fits 150 && for run in cold warm; do
  timeout 75 "$PY" -m bench scene "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --views 3 --seeds 3 \
    --steps 5 --no-reference --no-flops --no-infer-command --tag "cache-$run"
  echo "exit $? ($run)"
done

step "2/3 scene: 8 views x 3 seeds, 30 steps, 768x576 (reference on 1 image, extrapolated and labelled)"
fits 100 && timeout 100 "$PY" -m bench scene "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --views 8 --seeds 3 \
  --reference-requests 1 --no-infer-command --tag scene8
echo "exit $?"

step "3/3 fit: 50 mode-5 steps, 512x384, batch 3, accumulation 3"
fits 140 && timeout 140 "$PY" -m bench fit "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --train-steps 50 --train-warmup 3 \
  --reference-train-steps 3 --no-flops --tag fit50
echo "exit $?"

step "done; results in $OUT"
exit "$tests_rc"
