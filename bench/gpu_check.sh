#!/usr/bin/env bash
# One prepared GPU check for BENCHMARKS.md (issue 12), meant to finish well inside 8 minutes on one
# H100/H200 (each step has its own timeout; together at most 470 s): full SD 2.1 architecture with random
# weights, bf16, the production defaults.
#   1. bf16 vs fp32 images of the same requests (correctness of the bf16 default);
#   2. compile cache: the same compiled scene in two fresh processes sharing one cache directory
#      (the second's cold run is the warm-start cost every pipeline task pays);
#   3. scene with a reduced view count (8 views x 3 seeds, 30 steps, 768x576; reference timed on 1 image),
#      batch sizes `auto` as users run them (measured against free memory; the JSON's batch_plan);
#   4. fit: 50 mode-5 optimizer steps at 512x384, batch 3, accumulation 3, both as the loss
#      micro-benchmark and through the real train() loop (DataLoader, augmentation, accelerate).
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (default outputs/bench/gpu-check; JSON + log land there)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/bench/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
CACHE="$OUT/compile-cache"
COMMON=(--model sd21-random --device cuda --dtype bf16 --out "$OUT")
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "1/4 bf16 vs fp32 images (2 views x 1 seed, 30 steps, 768x576)"
timeout 80 "$PY" - "$OUT" <<'EOF'
import json, math, pathlib, sys, time
import torch
from bench.setup import PROMPT, build_bench_model
from viewneti_core.data import dtu
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler
from viewneti_core.method.acceleration import AccelerationOptions
from viewneti_core.config import ViewNetiConfig

settings = SamplerSettings(num_inference_steps=30, height=576, width=768, batch_size=2)
images, seconds = {}, {}
for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    fast = AccelerationOptions.from_config(ViewNetiConfig(), "cuda")  # infer's CUDA defaults...
    fast.dtype = None  # ...in the dtype under test
    bench = build_bench_model("sd21-random", torch.device("cuda"), dtype, acceleration=fast)
    requests = [SampleRequest.with_camera(PROMPT, 0, bench.cameras[v]) for v in dtu.EVAL_VIEWS[:2]]
    sampler = ViewNetiSampler(bench.components, bench.conditioner, settings)
    torch.cuda.synchronize(); t = time.perf_counter()
    images[name] = sampler.sample(requests, progress=False)
    torch.cuda.synchronize(); seconds[name] = time.perf_counter() - t
    del bench, sampler; torch.cuda.empty_cache()
diff = (images["bfloat16"] - images["float32"]).abs()
mse = float((diff ** 2).mean())
out = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "psnr_db": 10 * math.log10(1 / mse),
       "seconds": seconds, "device": torch.cuda.get_device_name()}
print(json.dumps(out, indent=2))
(pathlib.Path(sys.argv[1]) / "bf16-vs-fp32.json").write_text(json.dumps(out, indent=2) + "\n")
EOF
echo "exit $?"

step "2/4 compile cache: two fresh processes, one cache dir ($CACHE)"
for run in cold warm; do
  timeout 75 "$PY" -m bench scene "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --views 3 --seeds 3 \
    --steps 5 --no-reference --no-flops --no-infer-command --tag "cache-$run"
  echo "exit $? ($run)"
done

step "3/4 scene: 8 views x 3 seeds, 30 steps, 768x576 (reference on 1 image, extrapolated and labelled)"
timeout 100 "$PY" -m bench scene "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --views 8 --seeds 3 \
  --reference-requests 1 --no-infer-command --tag scene8
echo "exit $?"

step "4/4 fit: 50 mode-5 steps, 512x384, batch 3, accumulation 3"
timeout 140 "$PY" -m bench fit "${COMMON[@]}" --compile --compile-cache-dir "$CACHE" --train-steps 50 --train-warmup 3 \
  --reference-train-steps 3 --no-flops --tag fit50
echo "exit $?"

step "done; results in $OUT"
