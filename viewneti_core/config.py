"""One typed configuration tree for the CLI, YAML files and Prefect flow parameters.

Section and key names follow the original research code (`learnable_mode`, `log.exp_name`,
`data.dtu_subset`, `model.pretrained_model_name_or_path`, `optim.max_train_steps`, ...) so its
configs and command lines translate one to one. Every model forbids unknown keys, so a typo fails
loudly with the dotted path of the key instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from viewneti_core import dtu

LEARNABLE_MODES = (0, 2, 3, 4, 5)
RETIRED_MODES = {1: "mode 1 (view mapper only, no object token) was retired by the paper; use mode 2 or 5"}


class ConfigError(ValueError):
    """A configuration problem, with the dotted key that caused it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(_Section):
    """Where and how models run (not part of the original config; device choices live here)."""

    device: str = "auto"  # "auto" picks cuda when available, else cpu
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # dtype of the frozen weights at inference
    compile_unet: bool = False  # torch.compile the UNet (GPU benchmarks)
    channels_last: bool = False


class LogConfig(_Section):
    exp_name: str = "viewneti"
    exp_dir: Path = Path("outputs")
    save_steps: PositiveInt = 1500
    checkpoints_total_limit: PositiveInt | None = None
    overwrite_ok: bool = False
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    logging_dir: Path = Path("logs")


class DataConfig(_Section):
    train_data_dir: Path | None = None  # a DTU tree (modes 2-5) or an image folder (mode 0)
    dtu_subset: int = 3  # 0 = all 34 eval views, 1/3/6/9 = first n train views, -1/-2/-3 = cams 12..35
    dtu_lighting: int = dtu.DEFAULT_LIGHT
    dtu_scan: int = 114  # the scene of single-scene modes 2, 4, 5
    dtu_pretrain_scans: list[int] = Field(default_factory=lambda: list(dtu.PRETRAIN_SCANS))  # mode 3
    width: PositiveInt = 512
    height: PositiveInt = 384
    resolution: PositiveInt = 512  # square side for mode 0 image folders
    augmentation: Literal["fitting", "pretraining", "none"] = "fitting"
    camera_representation: Literal["dtu-12d", "spherical"] = "dtu-12d"
    placeholder_view_token: str = "<view>"
    super_category_view_token: str = "view"
    placeholder_object_token: str = "<object>"
    super_category_object_token: str = "object"
    scan_token_pattern: str = "<scan{scan}>"  # object token of each scene in mode 3
    repeats: PositiveInt = 100
    dataloader_num_workers: int = Field(default=0, ge=0)

    @field_validator("dtu_subset")
    @classmethod
    def _known_subset(cls, value: int) -> int:
        if value not in dtu.SUBSET_KEYS:
            raise ValueError(f"unknown DTU subset key {value}; valid keys are {list(dtu.SUBSET_KEYS)}")
        return value

    @field_validator("dtu_lighting")
    @classmethod
    def _known_light(cls, value: int) -> int:
        if not 0 <= value < dtu.NUM_LIGHTS:
            raise ValueError(f"DTU light index must be in 0..{dtu.NUM_LIGHTS - 1}, got {value}")
        return value

    @field_validator("placeholder_view_token", "placeholder_object_token")
    @classmethod
    def _placeholder_shape(cls, value: str) -> str:
        if not (value.startswith("<") and value.endswith(">")) or " " in value:
            raise ValueError(f"placeholder tokens look like '<name>' without spaces, got {value!r}")
        return value


class PESigmas(_Section):
    """Standard deviations of the random Fourier feature frequencies, per input (paper's final values)."""

    sigma_t: PositiveFloat = 0.03
    sigma_l: PositiveFloat = 2.0
    sigma_camera: PositiveFloat = 0.5


class ModelConfig(_Section):
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1"
    revision: str | None = None
    mapper_hidden_dim: PositiveInt = 64
    num_fourier_features: PositiveInt = 32  # rows of W; the encoding is 2x this (sin and cos)
    pe_sigmas: PESigmas = Field(default_factory=PESigmas)
    output_bypass: bool = True
    output_bypass_alpha_view: float = Field(default=5.0, ge=0)
    output_bypass_alpha_object: float = Field(default=5.0, ge=0)
    pretrained_view_mapper: str | None = None  # path or registry name (modes 4 and 5)
    pretrained_view_mapper_step: int | None = None


class EvalConfig(_Section):
    num_denoising_steps: PositiveInt = 30
    guidance_scale: float = Field(default=7.5, ge=1.0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    width: PositiveInt = 768
    height: PositiveInt = 576
    eval_batch_size: PositiveInt = 8  # images (views x seeds) per UNet call; each image costs 2 rows (CFG)
    validation_steps: PositiveInt = 250
    final_validation: bool = True  # also render the validation grid after the last step
    validation_views: list[int] = Field(default_factory=lambda: [25, 22, 28, 40])
    validation_prompts: list[str] = Field(default_factory=lambda: ["A photo of a {}"])

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one seed is needed")
        return value


class OptimConfig(_Section):
    max_train_steps: PositiveInt = 3000
    learning_rate: PositiveFloat = 1e-3
    scale_lr: bool = True  # lr x batch size x grad accumulation x processes, as in the original
    train_batch_size: PositiveInt = 3
    gradient_accumulation_steps: PositiveInt = 3
    seed: int | None = 0
    lr_scheduler: Literal["constant", "constant_with_warmup"] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    allow_tf32: bool = True
    cache_vae_posteriors: bool = False


class ViewNetiConfig(_Section):
    """The whole configuration of a ViewNeTI run."""

    learnable_mode: int = 5
    debug: bool = False
    run: RuntimeConfig = Field(default_factory=RuntimeConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    @field_validator("learnable_mode")
    @classmethod
    def _known_mode(cls, value: int) -> int:
        return check_learnable_mode(value)


def check_learnable_mode(mode: int) -> int:
    if mode in RETIRED_MODES:
        raise ValueError(f"learnable_mode {mode} is not supported: {RETIRED_MODES[mode]}")
    if mode not in LEARNABLE_MODES:
        raise ValueError(f"unknown learnable_mode {mode}; supported modes are {list(LEARNABLE_MODES)}")
    return mode


# ---- loading -----------------------------------------------------------------------------------


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `viewneti config show` for all keys)"
        lines.append(f"  {key}: {message}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" else ""))
    return "invalid configuration:\n" + "\n".join(lines)


def validate_config(data: dict[str, Any]) -> ViewNetiConfig:
    """Build the config from a plain dict, turning pydantic errors into a readable ConfigError."""
    try:
        return ViewNetiConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parse `--a.b value` / `--a.b=value` pairs into a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected a '--dotted.key value' override, got {arg!r}")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(items) or (items[i + 1].startswith("--") and len(items[i + 1]) > 2):
                raise ConfigError(f"override --{key} has no value")
            raw = items[i + 1]
            i += 1
        i += 1
        _set_dotted(nested, key, _parse_value(raw))
    return nested


def _parse_value(raw: str) -> Any:
    """YAML scalars and lists ('3000', 'true', '[0, 1]'), plus floats like '1e-3' that YAML 1.1 misses."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"malformed override key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r} goes below {part!r}, which is not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def load_config(path: Path | str | None = None, overrides: Sequence[str] | dict[str, Any] = ()) -> ViewNetiConfig:
    """YAML file (optional) + dotted overrides -> validated config."""
    data = read_yaml(path) if path is not None else {}
    override_tree = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return validate_config(deep_merge(data, override_tree))


def dump_config(config: ViewNetiConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
