"""Opt-in fast-path knobs for loaded components: dtype, channels-last, fused self-attention
projections and `torch.compile` of the UNet.

None of these changes what is computed, only how: with the same dtype the images agree with the
straightforward path to float rounding (tests/test_fast_path.py). They are driven by the
`run.dtype`, `run.channels_last`, `run.compile_unet` and `run.compile_cache_dir` config keys
(`AccelerationOptions.from_config`; "auto" values turn bf16, TF32 and channels-last on for CUDA only)
and applied once, after the XTI processors are installed (`build_model` installs them):

    model = build_model(config, components, ...)
    report = apply_acceleration(model.components, AccelerationOptions.from_config(config, components.device))

Attention already runs through PyTorch's SDPA kernels (diffusers' AttnProcessor2_0 for self-attention,
`XTICrossAttnProcessor` for cross-attention), on every device.

Fused projections. diffusers' `UNet2DConditionModel.fuse_qkv_projections()` cannot be used: it
replaces EVERY attention processor with `FusedAttnProcessor2_0`, which would drop our per-layer
(XTI) cross-attention processors, and it fuses the cross-attention key/value projections into one
`to_kv` applied to a single context, while XTI feeds keys and values from two different contexts
(`keys_ctx[l]`, `values_ctx[l]`). So we fuse only the self-attention (attn1) modules, one by one,
and give each a fused processor that accepts and ignores the XTI kwargs; every cross-attention
(attn2) keeps its index-bound `XTICrossAttnProcessor` untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

from viewneti_core.base_model.sd_models import SDComponents, resolve_device, resolve_dtype
from viewneti_core.method.xti_attention import XTICrossAttnProcessor

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class AccelerationOptions:
    dtype: str | None = None  # "auto" | "float32" | "float16" | "bfloat16"; None keeps the loaded dtype
    channels_last: bool = False
    fuse_self_attention: bool = False
    compile_unet: bool = False
    compile_mode: str = "default"  # "reduce-overhead" adds CUDA graphs
    compile_vae: bool = False  # the VAE encoder (training) and decoder (inference)
    tf32: bool = False  # TF32 matmuls/convolutions for what stays in fp32 (CUDA only; no-op elsewhere)
    compile_cache_dir: str | None = None  # inductor/triton caches, shared by every process that compiles

    @classmethod
    def from_config(cls, config, device: torch.device | str | None = None) -> AccelerationOptions:
        """From a `ViewNetiConfig` (or its `run` section) for `device` (default: `run.device` resolved)."""
        run = getattr(config, "run", config)
        device = resolve_device(run.device) if device is None else torch.device(device)
        cuda = device.type == "cuda"
        channels_last = cuda if run.channels_last == "auto" else bool(run.channels_last)
        return cls(
            dtype=run.dtype,
            channels_last=channels_last,
            # Fusing is pure layout (bit-for-bit the same maths up to matmul blocking), so it rides
            # with channels_last, the other layout knob.
            fuse_self_attention=channels_last,
            compile_unet=run.compile_unet,
            compile_mode=run.compile_mode,
            tf32=cuda,
            compile_cache_dir=str(compile_cache_dir(run.compile_cache_dir)) if run.compile_unet else None,
        )


def compile_cache_dir(configured: str | Path | None = None) -> Path:
    """Where inductor and triton keep compiled kernels: `run.compile_cache_dir`, else
    $XDG_CACHE_HOME/viewneti/compile (default ~/.cache/viewneti/compile). Persisting it means each
    pipeline task (a fresh process) loads the kernels instead of compiling the UNet again."""
    if configured is not None:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "viewneti" / "compile"


def use_compile_cache(path: str | Path) -> Path:
    """Point inductor and triton at `path` (before the first compile; they read these variables then).
    Explicit environment settings win, so a cluster can still share its own cache directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))
    # inductor's FX-graph cache (on by default in torch >= 2.4) makes warm starts skip compilation.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    return path


@dataclass
class AccelerationReport:
    options: dict
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # knob -> reason
    fused_self_attention_layers: int = 0


class FusedSelfAttnProcessor(FusedAttnProcessor2_0):
    """diffusers' fused-QKV SDPA self-attention, accepting (and ignoring) the XTI contexts.

    The explicit parameters matter: `Attention.forward` drops (with a warning on every call)
    cross_attention_kwargs that are not named in the processor's signature.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        xti_keys: torch.Tensor | None = None,
        xti_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, None, attention_mask, temb)


def _is_self_attention(name: str, module: Attention) -> bool:
    return not module.is_cross_attention and not name.endswith("attn2")


def fuse_self_attention_projections(model: torch.nn.Module) -> int:
    """Fuse to_q/to_k/to_v of every self-attention module into one to_qkv matmul.

    Cross-attention modules (and their XTI processors) are left alone. The separate to_q/to_k/to_v
    stay in place (frozen), so re-installing unfused processors later still works. Returns the number
    of fused modules. Idempotent.
    """
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or not _is_self_attention(name, module):
            continue
        if isinstance(module.processor, XTICrossAttnProcessor):  # never touch an XTI layer
            continue
        if not getattr(module, "fused_projections", False):
            requires_grad = module.to_q.weight.requires_grad
            module.fuse_projections(fuse=True)
            module.to_qkv.requires_grad_(requires_grad)
        module.set_processor(FusedSelfAttnProcessor())
        count += 1
    return count


def xti_layer_indices(unet: UNet2DConditionModel) -> list[int]:
    """Layer indices of the installed XTI processors, in `attn_processors` order (for checks)."""
    return [p.layer_index for p in unet.attn_processors.values() if isinstance(p, XTICrossAttnProcessor)]


def compile_available() -> tuple[bool, str]:
    """Whether `torch.compile` can generate code here (inductor needs a C compiler on CPU, triton on GPU)."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if torch.cuda.is_available():
        return True, ""
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("g++") is None:
        return False, "no C compiler found for inductor's CPU backend"
    return True, ""


def apply_acceleration(components: SDComponents, options: AccelerationOptions) -> AccelerationReport:
    """Apply the selected knobs in place (call after `install_xti_processors`/`build_model`)."""
    report = AccelerationReport(options=asdict(options))
    if options.compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {options.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if options.tf32 and components.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        report.applied.append("tf32")
    if options.dtype is not None:
        dtype = resolve_dtype(options.dtype, components.device)
        if components.unet.dtype != dtype:
            components.to(dtype=dtype)
            report.applied.append(f"dtype={str(dtype).removeprefix('torch.')}")
    if options.fuse_self_attention:
        xti_before = xti_layer_indices(components.unet)
        if not xti_before:
            report.skipped["fuse_self_attention"] = "no XTI processors installed yet: call after build_model"
        else:
            report.fused_self_attention_layers = fuse_self_attention_projections(components.unet)
            report.fused_self_attention_layers += fuse_self_attention_projections(components.vae)
            if xti_layer_indices(components.unet) != xti_before:  # would be a bug in this module
                raise RuntimeError("fusing self-attention projections changed the XTI cross-attention processors")
            report.applied.append(f"fused_self_attention({report.fused_self_attention_layers} layers)")
    if options.channels_last:
        components.unet.to(memory_format=torch.channels_last)
        components.vae.to(memory_format=torch.channels_last)
        report.applied.append("channels_last")
    if options.compile_unet or options.compile_vae:
        ok, reason = compile_available()
        if not ok:
            report.skipped["compile"] = reason
            logger.warning("torch.compile skipped: %s", reason)
        else:
            if options.compile_cache_dir is not None:
                report.applied.append(f"compile_cache={use_compile_cache(options.compile_cache_dir)}")
            if options.compile_unet:
                # In-place `Module.compile` keeps the module's type and attributes (config, dtype, ...).
                components.unet.compile(mode=options.compile_mode, dynamic=False)
                report.applied.append(f"compile_unet(mode={options.compile_mode})")
            if options.compile_vae:
                components.vae.encoder.compile(mode=options.compile_mode, dynamic=False)
                components.vae.decoder.compile(mode=options.compile_mode, dynamic=False)
                report.applied.append(f"compile_vae(mode={options.compile_mode})")
    return report
