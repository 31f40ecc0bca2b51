"""Shared benchmark machinery: devices and peaks, timing, FLOP counting, memory, JSON and tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name(),
# and where the number comes from. Checked in order: the first matching key wins. The H200's is the
# MEASURED peak of large bf16 matmuls on the H200 lent to this project (~790 TFLOP/s; its datasheet
# says 989): a share of a peak no kernel reaches would understate how close the path gets.
GPU_PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H200", 790.0, "measured (bf16 torch.mm on the lent H200; datasheet 989)"),
    ("H100 PCIe", 756.0, "datasheet"),
    ("H100", 989.0, "datasheet (SXM)"),
    ("A100", 312.0, "datasheet"),
)

OUT_DIR = Path("outputs/bench")


# ---- device ------------------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model_name()} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})"


def gpu_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, peak, source in GPU_PEAK_BF16_TFLOPS:
        if key in name:
            return peak, f"{key} dense bf16 {peak:g} TFLOP/s, {source}"
    return None, f"n/a ({name} not in the peak table)"


def measure_cpu_matmul_peak(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Measured torch.mm throughput on this CPU in `dtype` (TFLOP/s): a practical, labelled reference
    peak. Measured in the run's dtype because CPUs with bf16 matrix units (e.g. AMX) run bf16 matmuls
    several times faster than fp32 ones, which would make an fp32 peak meaningless for a bf16 run."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def reference_peak(device: torch.device, dtype: torch.dtype, measure_cpu: bool = True) -> tuple[float | None, str]:
    """(peak TFLOP/s, label) against which achieved throughput is reported."""
    if device.type == "cuda":
        peak, label = gpu_peak_tflops(device)
        if peak is not None and dtype not in (torch.bfloat16, torch.float16):
            label += f" (this run computes in {dtype}; the share is still against the bf16 peak)"
        return peak, label
    if not measure_cpu:
        return None, "n/a"
    peak = measure_cpu_matmul_peak(dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    return peak, (f"measured CPU {name} torch.mm 2048x2048 peak {peak * 1e3:.1f} GFLOP/s with "
                  f"{torch.get_num_threads()} torch thread(s) (not a datasheet number)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- memory ------------------------------------------------------------------------------------


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_memory_kind": "torch.cuda.max_memory_allocated since this measurement began"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_gib": rss_kib / 2**20,
            "peak_memory_kind": "process RSS high-water (getrusage ru_maxrss) so far, includes everything before"}


# ---- timing and FLOPs ----------------------------------------------------------------------------


@contextmanager
def timed(device: torch.device, into: dict, key: str):
    """Accumulate wall seconds (device-synchronised) under `into[key]`."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one eager call, counted with torch.utils.flop_counter.FlopCounterMode.

    FlopCounterMode counts matmuls, convolutions and SDPA (2 FLOPs per multiply-add), forward and
    backward; elementwise ops and norms are not counted, so achieved TFLOP/s is a lower bound.
    Compiled regions are invisible to it: count on the eager module (same maths).
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12 if seconds > 0 else float("nan")


# ---- output --------------------------------------------------------------------------------------


def environment() -> dict:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "hostname_cpu": cpu_model_name(),
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_1_5_15min_at_start": os.getloadavg(),  # other work on the machine skews CPU timings
        "torch_threads": torch.get_num_threads(),
    }


def write_json_atomic(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n== {title} ==")
    for key, value in rows:
        print(f"  {key.ljust(width)}  {fmt(value)}")


def int_list(text: str) -> list[int]:
    """argparse type for "1,2,3" (blanks ignored)."""
    return [int(v) for v in text.split(",") if v.strip()]
