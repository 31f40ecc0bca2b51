"""Stable Diffusion components: loading from a hub id or a local diffusers directory, and builders.

`builtin:mini-world` is the one shipped trained model: the mini world's base model, trained from
scratch by `viewneti models build-mini-world` on synthetic scenes (see `viewneti_core/mini_world/world.py`).

Two builders need no download:
- `tiny`: a Stable-Diffusion-shaped model with random weights (same UNet block layout, hence the
  same 16 cross-attention layers in the same order as SD 2.1) that runs in seconds on a CPU;
- `sd21-random`: the full SD 2.1 architecture with random weights, for GPU benchmarks.
Both are saved in diffusers format and load back through `load_components`, the same code path as a
real model. A `viewneti_model.json` file in the model directory records that weights are random so
every downstream table can say so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from viewneti_core.atomic_files import naming_path, normalize_modes, temp_dir_beside
from viewneti_core.base_model.model_names import BUILTIN_PREFIX
from viewneti_core.base_model.model_names import looks_local as _looks_local
from viewneti_core.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

MODEL_INFO_FILE = "viewneti_model.json"
SUBFOLDERS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
BUILDERS = ("tiny", "sd21-random")
# Shipped, trained weights (not builders): name -> directory in diffusers format inside the package.
MINI_WORLD_WEIGHTS = "mini-world"  # the `weights` label of the shipped mini-world model
MINI_WORLD_NOTE = "mini world: synthetic scenes, model trained by this project; not SD 2.1 / not DTU"
SHIPPED = {"mini-world": Path(__file__).resolve().parent / "model_weights" / "mini-world" / "model"}


@dataclass
class SDComponents:
    """The frozen parts of a Stable Diffusion model that ViewNeTI conditions."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler  # training noise schedule; samplers are built from its config
    source: str  # hub id, directory or builtin name it came from
    weights: str  # "pretrained" or "random"

    @property
    def text_width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDComponents:
        for module in (self.text_encoder, self.vae, self.unet):
            same_device = device is None or module.device == torch.device(device)
            same_dtype = dtype is None or module.dtype == dtype
            if not (same_device and same_dtype):  # diffusers warns on every .to(), even a no-op one
                module.to(device=device, dtype=dtype)
        return self

    def freeze(self) -> SDComponents:
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)
            module.eval()
        return self


# ---- offline tokenizer -------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def build_byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer built offline: 256 byte characters, the same with `</w>`, and the specials.

    With no merges every word splits into characters. "!" comes first, so it gets id 0 and serves as
    the pad token like SD 2.x's tokenizer.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)


# ---- builders ----------------------------------------------------------------------------------


def _sd21_config(name: str) -> dict:
    text = resources.files("viewneti_core.base_model").joinpath("model_configs", "sd21", name, "config.json").read_text()
    return json.loads(text)


def tiny_configs(text_width: int = 32) -> dict[str, dict]:
    """Configs of the tiny SD-shaped model: SD 2.1's block layout at a fraction of the width."""
    unet = _sd21_config("unet") | {
        "block_out_channels": [32, 32, 64, 64],
        "attention_head_dim": [2, 2, 4, 4],
        "cross_attention_dim": text_width,
        "norm_num_groups": 8,
        "sample_size": 8,
    }
    vae = _sd21_config("vae") | {
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    }
    text = _sd21_config("text_encoder") | {
        "hidden_size": text_width,
        "intermediate_size": 2 * text_width,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": text_width,
        "vocab_size": 514,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 0,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": _sd21_config("scheduler")}


def sd21_configs() -> dict[str, dict]:
    return {name: _sd21_config(name) for name in ("unet", "vae", "text_encoder", "scheduler")}


def _build_from_configs(configs: dict[str, dict], source: str, seed: int) -> SDComponents:
    torch.manual_seed(seed)
    text_config = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")}
    return SDComponents(
        tokenizer=build_byte_level_tokenizer(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        vae=AutoencoderKL.from_config(configs["vae"]),
        unet=UNet2DConditionModel.from_config(configs["unet"]),
        scheduler=DDPMScheduler.from_config(configs["scheduler"]),
        source=source,
        weights="random",
    )


def shipped_model_dir(name: str) -> Path:
    path = SHIPPED[name]
    if not (path / "model_index.json").is_file():
        raise _not_found(f"{BUILTIN_PREFIX}{name}", f"the shipped weights are missing from {path}; rebuild them "
                         f"with `viewneti models build-mini-world --out DIR` and copy DIR/ into {path.parent}")
    return path


def build_components(builder: str, seed: int = 0) -> SDComponents:
    """Build a random-weight model without any download: 'tiny' or 'sd21-random'."""
    if builder == "tiny":
        return _build_from_configs(tiny_configs(), f"{BUILTIN_PREFIX}tiny", seed)
    if builder == "sd21-random":
        return _build_from_configs(sd21_configs(), f"{BUILTIN_PREFIX}sd21-random", seed)
    raise ValueError(f"unknown model builder {builder!r}; available: {', '.join(BUILDERS)}")


def save_components(components: SDComponents, out_dir: Path | str, builder: str | None = None) -> Path:
    """Save in diffusers format (plus our weights label), atomically: temp dir, then rename."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or delete it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out_dir)
    try:
        pipeline = StableDiffusionPipeline(
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=components.unet,
            scheduler=components.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        with _quiet_progress_bars(), naming_path(out_dir):  # a full disk names the model directory
            pipeline.save_pretrained(tmp, safe_serialization=True)
        _write_explicit_scheduler_config(components.scheduler, tmp / "scheduler" / "scheduler_config.json")
        info = {"weights": components.weights, "builder": builder, "note": weights_note(components.weights)}
        (tmp / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        normalize_modes(tmp)  # diffusers writes its safetensors files 0600
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_explicit_scheduler_config(scheduler: DDPMScheduler, path: Path) -> None:
    """Keep only the keys the source config set, as in SD 2.1's own file.

    Serialising every default would pin DDPM's `timestep_spacing="leading"` into the file, and a
    DPM-Solver built from it would then sample at 961, 929, ... instead of SD 2.1's 999, 966, ..., 33.
    """
    defaults = set(scheduler.config.get("_use_default_values", []))
    config = {k: v for k, v in dict(scheduler.config).items() if k not in defaults and not k.startswith("_")}
    config = {"_class_name": "DDIMScheduler"} | config
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def weights_note(weights: str) -> str:
    """The label every output of a model with these weights carries ("" for real pretrained weights)."""
    if weights == "random":
        return "RANDOM WEIGHTS: outputs of this model are not benchmark quality"
    if weights == MINI_WORLD_WEIGHTS:
        return MINI_WORLD_NOTE
    return ""


# ---- loading -----------------------------------------------------------------------------------


def _not_found(name: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load the Stable Diffusion model {name!r}: {reason}\n"
        "  Pass `model.pretrained_model_name_or_path` as a local diffusers directory (with model_index.json "
        "and the tokenizer/, text_encoder/, vae/, unet/, scheduler/ subfolders) or a reachable hub id.\n"
        "  The official 'stabilityai/stable-diffusion-2-1' hub repo was taken down in late 2025: use a local "
        "copy or a mirror of it.\n"
        "  Without any download: `viewneti models make-tiny --out DIR` builds a tiny random-weight model, "
        "or use 'builtin:mini-world' (trained on synthetic scenes) / 'builtin:tiny' / 'builtin:sd21-random'."
    )


def load_components(
    name_or_path: str | Path,
    revision: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler, frozen, on `device` in `dtype`."""
    name = str(name_or_path)
    builtin = name.removeprefix(BUILTIN_PREFIX) if name.startswith(BUILTIN_PREFIX) else None
    if builtin in SHIPPED:
        components = _load_diffusers_components(str(shipped_model_dir(builtin)), None, dtype)
        components.source = name
    elif builtin is not None:
        components = build_components(builtin).to(dtype=dtype)
    else:
        components = _load_diffusers_components(name, revision, dtype)
    return components.to(device=device).freeze()


def _local_source(name: str) -> str:
    path = Path(name).expanduser()
    if not path.is_dir():
        raise _not_found(name, f"the directory {path} does not exist")
    missing = [sub for sub in SUBFOLDERS if not (path / sub).is_dir()]
    if missing:
        raise _not_found(name, f"{path} is missing the subfolder(s) {', '.join(missing)}")
    return str(path)


def check_model_available(name_or_path: str | Path, revision: str | None = None) -> str:
    """Fail fast if the base model cannot be loaded, without reading any weights: run before work
    that takes hours (downloading DTU, training) so a missing model is not found at the end.

    A local directory must have its five subfolders; a hub id must resolve its model_index.json (from
    the local Hugging Face cache when offline). Returns where the model was found.
    """
    name = str(name_or_path)
    if name.startswith(BUILTIN_PREFIX):
        builder = name.removeprefix(BUILTIN_PREFIX)
        if builder in SHIPPED:
            return str(shipped_model_dir(builder))
        if builder not in BUILDERS:
            raise _not_found(name, f"unknown builder {builder!r}; available: {', '.join((*BUILDERS, *SHIPPED))}")
        return name
    if _looks_local(name):
        return _local_source(name)
    from huggingface_hub import hf_hub_download

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry chatter (printed twice under Prefect); our error says it all
    try:
        hf_hub_download(name, "model_index.json", revision=revision)
    except Exception as exc:  # noqa: BLE001 - offline/cache misses, 404s and auth errors all mean "not loadable"
        raise _not_found(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    finally:
        hub_logger.setLevel(level)
    return name


@contextlib.contextmanager
def _quiet_progress_bars():
    """Without transformers' and diffusers' per-component "Loading weights" / "Writing model shards"
    bars (a pipeline demo printed 13 of them for a model read from a local disk in milliseconds)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    hub_on = not are_progress_bars_disabled()
    libraries = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()
        (enable_progress_bars if hub_on else disable_progress_bars)()


def _load_diffusers_components(name: str, revision: str | None, dtype: torch.dtype) -> SDComponents:
    path = Path(name).expanduser()
    source = _local_source(name) if _looks_local(name) else name
    kwargs = {"revision": revision} if revision else {}
    # From a local directory there is nothing to wait for; a hub download keeps its progress bars.
    quiet = _quiet_progress_bars() if _looks_local(name) else contextlib.nullcontext()
    try:
        with quiet:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **kwargs)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kwargs)
            scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    except (OSError, ValueError) as exc:  # hub errors derive from OSError; bad configs raise ValueError
        raise _not_found(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    weights = "pretrained"
    if path.is_dir() and (path / MODEL_INFO_FILE).is_file():
        weights = json.loads((path / MODEL_INFO_FILE).read_text()).get("weights", "pretrained")
    logger.info("loaded Stable Diffusion components from %s (%s weights)", source, weights)
    return SDComponents(tokenizer, text_encoder, vae, unet, scheduler, source=source, weights=weights)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA (about 5x the fp32 throughput of the UNet there, same images to bf16
    rounding), float32 elsewhere (CPUs have no fast bf16 matmul); `device` None means `resolve_device('auto')`."""
    if name == "auto":
        device = resolve_device("auto") if device is None else torch.device(device)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
