#!/usr/bin/env bash
# The mini world's base model trained on a GPU: a diagnosis for issue 19, not the shipped build. Does a
# base model trained on far more samples than the 90-minute, 2-core CPU build can afford lift mode 2 from
# 9 views past copying the nearest input (docs/mini_world.md, "What holds mode 2 back from 9 views")?
#
# It runs `viewneti models build-mini-world --device cuda` (today's defaults, except the UNet's batch:
# 256 instead of 32, so 8x the training samples in the same 10,000 steps; more options pass through) up to
# the end of the UNet phase, stops it there, and packs the build's work folder into OUT in parts of at
# most 15 MiB (the device tool brings back at most 8 files of 16 MiB). The view mapper's phase, which a
# CPU does in about 23 minutes, is left to `--resume` on this machine, so the GPU spends its minutes on
# what the CPU cannot afford. If the UNet phase is not done after LIMIT_S seconds (default 480), the
# build's last checkpoint is packed instead: `--resume` goes on from there as well.
#
# Usage:   bash bench/gpu_mini_world.sh OUT_DIR [more build options]
#          DEVICE=cpu LIMIT_S=120 bash bench/gpu_mini_world.sh OUT_DIR --scenes-per-seed 1 ...  (a trial here)
# The lent machine lacks diffusers and pydantic: carry `.whl` (bench/device_python.sh says how).
# Back here: OUT_DIR/resume.txt holds the commands that unpack the parts beside a new --out and finish the
# build on the CPU (the options must repeat the GPU run's: a resume refuses others).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash bench/gpu_mini_world.sh OUT_DIR [more build options]}"
shift
DEVICE="${DEVICE:-cuda}"
LIMIT_S="${LIMIT_S:-480}"
mkdir -p "$OUT"
source bench/device_python.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

WORK="$(mktemp -d)"
BUILD=(models build-mini-world --out "$WORK/world" --device "$DEVICE" --unet-batch 256 "$@")
start=$(date +%s)
"$PY" -m viewneti_cli.viewneti "${BUILD[@]}" > "$OUT/build.log" 2>&1 &
pid=$!
until [ -f "$WORK/.world.build/model/model_index.json" ] || ! kill -0 "$pid" 2>/dev/null \
      || (( $(date +%s) - start > LIMIT_S )); do
  sleep 2
done
seconds=$(( $(date +%s) - start ))
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
fi
wait "$pid" && rc=0 || rc=$?
state="$WORK/.world.build/state.json"
if [ ! -f "$state" ]; then
  echo "error: the build wrote no state (exit $rc, ${seconds} s); the end of its log:"
  tail -c 3000 "$OUT/build.log" | tr '\r' '\n' | tail -n 30
  exit 1
fi
# What a resume needs, without what it makes again (the rendered views, the DTU tree, the mapper's runs)
# and, once the model is saved, without the phases' checkpoints that a resume no longer reads.
skip=(--exclude=scenes.safetensors --exclude=dtu --exclude='.dtu.tmp-*' --exclude=runs)
if [ -f "$WORK/.world.build/model/model_index.json" ]; then
  skip+=(--exclude=vae.safetensors --exclude=unet.safetensors --exclude=captions.json)
fi
tar czf - -C "$WORK" "${skip[@]}" .world.build | split -b 15m - "$OUT/world-build.tgz.part-"
cp "$state" "$OUT/state.json"
{ tr '\r' '\n' < "$OUT/build.log" | grep -v "it/s\]$" | tail -n 40; tr '\r' '\n' < "$OUT/build.log" | tail -n 1; } \
  > "$OUT/build-tail.log" || true
rm -f "$OUT/build.log"  # tqdm's redraws: megabytes, and the tail above holds what matters
{
  echo "# the GPU run: $DEVICE, ${seconds} s, exit $rc; stopped at $("$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print('phase', s['phase'], 'step', s['step'])" "$state")"
  echo "# unpack beside the new --out (here DIR), then resume on the CPU with the GPU run's options:"
  echo "cat $OUT/world-build.tgz.part-* | tar xz -C DIR_PARENT && mv DIR_PARENT/.world.build DIR_PARENT/.DIR_NAME.build"
  echo "viewneti models build-mini-world --out DIR --resume --device cpu --unet-batch 256 $*"
} > "$OUT/resume.txt"
echo "after ${seconds} s: phase $("$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['phase'], 'step', s['step'])" "$state")"
cat "$OUT/build-tail.log" | tail -n 5
ls -la "$OUT"
rm -rf "$WORK"
