"""`python -m bench scene|fit|pretrain|all [options]`: ViewNeTI benchmarks (not part of the tests).

Each benchmark times OUR path and a REFERENCE-STYLE path (bench/reference_path.py) in the same run on
the same machine, counts FLOPs with torch.utils.flop_counter.FlopCounterMode, reports achieved
TFLOP/s, the share of the device's peak and peak memory, prints a table and writes a JSON result
(atomically) under outputs/bench/.

CPU, tiny model, reduced sizes (minutes):
    python -m bench all --model tiny --device cpu --dtype fp32 --views 4 --seeds 1 --steps 5 \\
        --size 128x96 --train-size 128x96
GPU, full SD 2.1 architecture with random weights:
    python -m bench scene --model sd21-random --device cuda --dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

from bench import fitting, scene_inference
from bench.common import (
    OUT_DIR,
    device_description,
    environment,
    print_table,
    reference_peak,
    write_json_atomic,
)
from bench.setup import DTYPE_NAMES, DTYPES
from viewneti_core.method.acceleration import COMPILE_MODES, AccelerationOptions, compile_cache_dir


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width % 8 or height % 8:
        raise argparse.ArgumentTypeError("width and height must be multiples of 8")
    return width, height


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["scene", "fit", "pretrain", "all"])
    p.add_argument("--model", choices=["tiny", "sd21-random"], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    fast = p.add_argument_group("fast path (our path only)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    fast.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                      help="reduce-overhead adds CUDA graphs; max-autotune* autotune GEMMs (slow to compile)")
    fast.add_argument("--compile-vae", action="store_true", help="also torch.compile the VAE encoder and decoder")
    fast.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    fast.add_argument("--compile-cache-dir", type=Path, default=None,
                      help="inductor/triton cache (default: run.compile_cache_dir's, ~/.cache/viewneti/compile)")
    fast.add_argument("--no-fuse", dest="fuse", action="store_false", help="do not fuse self-attention projections")
    scene = p.add_argument_group("scene inference")
    scene.add_argument("--views", type=int, default=34)
    scene.add_argument("--seeds", type=int, default=3)
    scene.add_argument("--steps", type=int, default=30)
    scene.add_argument("--size", type=_size, default=(768, 576), help="WxH of rendered images")
    scene.add_argument("--batch-size", type=_batch, default="auto",
                       help="requests per UNet call (x2 rows with CFG); auto (default, as users run): fit free "
                            "GPU memory, 8 on CPU")
    scene.add_argument("--decode-batch-size", type=_batch, default="auto",
                       help="images per VAE decode call; auto (default): fit free GPU memory, 4 on CPU")
    scene.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up run (best is kept)")
    scene.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed cold run")
    scene.add_argument("--reference-requests", type=int, default=None,
                       help="time the reference on only the first K images and extrapolate (labelled) to all")
    scene.add_argument("--no-infer-command", dest="infer_command", action="store_false",
                       help="skip timing `viewneti infer` end to end (load run, render, write predictions/grids)")
    scene.add_argument("--reference-dtype", choices=list(DTYPES), default=None,
                       help="inference reference dtype (default: same as --dtype, so the ratio is about structure)")
    train = p.add_argument_group("fitting / pretraining")
    train.add_argument("--train-size", type=_size, default=(512, 384))
    train.add_argument("--batch", type=int, default=3)
    train.add_argument("--accumulation", type=int, default=3)
    train.add_argument("--train-steps", type=int, default=20, help="timed optimizer steps")
    train.add_argument("--train-warmup", type=int, default=3, help="untimed optimizer steps first")
    train.add_argument("--reference-train-steps", type=int, default=None, help="timed reference steps (default: same)")
    train.add_argument("--train-reference-dtype", choices=list(DTYPES), default="fp32",
                       help="the original trained in fp32")
    train.add_argument("--no-train-loop", dest="train_loop", action="store_false",
                       help="skip timing the real train() loop (DataLoader, augmentation, accelerate)")
    train.add_argument("--scenes", type=int, default=88, help="object mappers in mode 3 (88 pretraining scans)")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--no-flops", dest="flops", action="store_false")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--tag", default="", help="suffix for the JSON file names")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    args.acceleration = AccelerationOptions(
        dtype=DTYPE_NAMES[args.dtype], channels_last=args.channels_last, fuse_self_attention=args.fuse,
        compile_unet=args.compile, compile_mode=args.compile_mode, compile_vae=args.compile_vae,
        tf32=args.device == "cuda",  # as `viewneti infer` on CUDA (AccelerationOptions.from_config)
        compile_cache_dir=str(compile_cache_dir(args.compile_cache_dir)) if args.compile or args.compile_vae else None,
    )
    device = torch.device(args.device)
    peak, peak_label = reference_peak(device, DTYPES[args.dtype])
    header = {
        "device": device_description(device), "date": dt.date.today().isoformat(),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "peak_tflops": peak, "peak_label": peak_label, "environment": environment(),
    }
    which = ["scene", "fit", "pretrain"] if args.which == "all" else [args.which]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in which:
        if name == "scene":
            result, rows = scene_inference.run(args, peak), scene_inference.table_rows
        else:
            result = fitting.run(args, peak, 5 if name == "fit" else 3)
            rows = fitting.table_rows
        result = header | result
        if result.get("rank", 0) != 0:
            continue
        tag = f"-{args.tag}" if args.tag else ""
        path = write_json_atomic(args.out / f"{name}-{args.model}-{args.device}{tag}-{stamp}.json", result)
        print_table(f"{name} | {header['device']} | peak: {peak_label}", rows(result))
        print(f"  result JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
