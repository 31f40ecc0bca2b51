"""One typed configuration tree for the CLI, YAML files and Prefect flow parameters.

Section and key names follow the original research code (`learnable_mode`, `log.exp_name`,
`data.dtu_subset`, `model.pretrained_model_name_or_path`, `optim.max_train_steps`, ...) so its
configs and command lines translate one to one. Every model forbids unknown keys, so a typo fails
loudly with the dotted path of the key instead of being silently ignored.
"""

from __future__ import annotations

import logging
import re
import string
import types
import typing
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from viewneti_core.data import dtu
from viewneti_core.data.captions import VIEW_CAPTION
from viewneti_core.errors import ArtifactError
from viewneti_core.safe_io import (
    BoundedBaseLoader,
    YAMLLimitError,
    load_yaml_text,
    read_yaml_file,
    short_repr,
)

logger = logging.getLogger(__name__)

LEARNABLE_MODES = (0, 2, 3, 4, 5)
# CLIP's own special tokens: a placeholder equal to one would replace every BOS/EOS position (the
# unconditional prompt's included). `<|...|>` is the shape of special tokens in CLIP-style vocabularies.
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
RETIRED_MODES = {1: "mode 1 (view mapper only, no object token) was retired by the paper; use mode 2 or 5"}
# Filesystems take names of at most 255 bytes (NAME_MAX) and paths of 4096 (PATH_MAX); run names keep
# room for the temporary names written beside them (".NAME.tmp-XXXXXXXX", ".NAME.lock").
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096
RUN_NAME_MAX_BYTES = 200
TOKEN_MAX_CHARS = 100  # placeholder tokens also name mapper files (object-NAME.safetensors)


class ConfigError(ValueError):
    """A configuration problem, with the dotted key that caused it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _path_fits_filesystem(cls, value: Any) -> Any:
        if isinstance(value, PurePath):
            check_path_fits(value)
        return value


def check_path_fits(path: PurePath) -> PurePath:
    """Refuse a path no filesystem can hold (a component over 255 bytes, the whole over 4096), so it
    fails as a config error instead of an ENAMETOOLONG traceback deep in a run."""
    total = len(str(path).encode("utf-8", "surrogateescape"))
    if total > PATH_MAX_BYTES:
        raise ValueError(f"path of {total} bytes; filesystems take at most {PATH_MAX_BYTES}")
    for part in path.parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX_BYTES:
            raise ValueError(f"path component {short_repr(part, 40)} is {size} bytes long; a file or directory "
                             f"name may have at most {NAME_MAX_BYTES}")
    return path


class RuntimeConfig(_Section):
    """Where and how models run (not part of the original config; device choices live here)."""

    device: str = "auto"  # "auto" picks cuda when available, else cpu
    # dtype of the frozen weights at inference: "auto" is bfloat16 on CUDA, float32 on CPU
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    compile_unet: bool = False  # torch.compile the UNet (dynamic=False: the sampler pads to fixed shapes)
    # torch.compile mode: "reduce-overhead" adds CUDA graphs (the sampler's padded batches keep shapes
    # static, so one graph per shape is recorded and replayed); "max-autotune*" also autotune GEMMs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # channels-last memory format + fused self-attention projections; "auto" is on for CUDA only
    channels_last: bool | Literal["auto"] = "auto"
    compile_cache_dir: Path | None = None  # inductor/triton caches; None: ~/.cache/viewneti/compile


class LogConfig(_Section):
    exp_name: str = "viewneti"  # a plain directory name inside exp_dir
    exp_dir: Path = Path("outputs")
    save_steps: PositiveInt = 1500
    checkpoints_total_limit: PositiveInt | None = None
    overwrite_ok: bool = False
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    logging_dir: Path = Path("logs")

    @field_validator("exp_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The run dir is exp_dir/exp_name, and overwrite_ok deletes its checkpoints/: a name with a
        # separator or '..' (or an absolute path, which replaces exp_dir) would point anywhere.
        if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
            raise ValueError("log.exp_name must be a plain directory name (no '/', '\\', '.' or '..'); "
                             "put the parent directory in log.exp_dir")
        size = len(value.encode("utf-8", "surrogateescape"))
        if size > RUN_NAME_MAX_BYTES:
            raise ValueError(f"log.exp_name is {size} bytes long; a run name may have at most {RUN_NAME_MAX_BYTES} "
                             f"(filesystems take {NAME_MAX_BYTES}-byte names, and the run writes temporary names "
                             "beside its directory)")
        return value


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
    view_caption: str = VIEW_CAPTION
    super_category_view_token: str = "view"
    placeholder_object_token: str = "<object>"
    super_category_object_token: str = "object"
    scan_token_pattern: str = "<scan{scan}>"  # object token of each scene in mode 3
    repeats: PositiveInt = 100
    # "auto": 4 worker processes on CUDA (augmentation off the GPU's critical path), 0 on CPU. Workers
    # draw augmentations from their own seeds: reproducible for one worker count, not across counts.
    dataloader_num_workers: NonNegativeInt | Literal["auto"] = "auto"

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
        return check_placeholder_token(value)

    @field_validator("view_caption")
    @classmethod
    def _caption_fields(cls, value: str) -> str:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a caption template ({exc}); e.g. {VIEW_CAPTION!r}") from None
        if sorted(fields) != ["object", "view"]:
            raise ValueError(f"the caption needs {{view}} and {{object}} once each and no other {{...}} field, "
                             f"got {value!r}; e.g. {VIEW_CAPTION!r}")
        return value

    @field_validator("super_category_view_token", "super_category_object_token")
    @classmethod
    def _some_word(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a super-category word is needed (its embedding norm rescales the mapper output)")
        return value

    @model_validator(mode="after")
    def _distinct_placeholders(self) -> DataConfig:
        if self.placeholder_object_token == self.placeholder_view_token:
            raise ValueError(f"placeholder_object_token and placeholder_view_token are both "
                             f"{self.placeholder_view_token!r}; the view and the object need distinct tokens")
        if "{scan}" not in self.scan_token_pattern:
            raise ValueError(f"scan_token_pattern {self.scan_token_pattern!r} has no '{{scan}}' field")
        try:
            check_placeholder_token(self.scan_token_pattern.format(scan=0))
        except (KeyError, IndexError) as exc:
            raise ValueError(f"scan_token_pattern {self.scan_token_pattern!r} may have no field but {{scan}} "
                             f"(found {exc})") from None
        except ValueError as exc:
            raise ValueError(f"scan_token_pattern {self.scan_token_pattern!r}: {exc}") from None
        scan_tokens = [self.scan_token_pattern.format(scan=s) for s in self.dtu_pretrain_scans]
        if self.placeholder_view_token in scan_tokens:
            raise ValueError(f"scan_token_pattern {self.scan_token_pattern!r} gives the view token "
                             f"{self.placeholder_view_token!r} for one of dtu_pretrain_scans")
        return self


def check_placeholder_token(value: str) -> str:
    """'<name>': angle brackets keep a placeholder from matching a word of the vocabulary (e.g. the
    super-category word itself); CLIP's special tokens are refused."""
    if len(value) > TOKEN_MAX_CHARS:
        raise ValueError(f"a placeholder token may have at most {TOKEN_MAX_CHARS} characters (it also names "
                         f"the mapper's files), got {len(value)}")
    if len(value) < 3 or not (value.startswith("<") and value.endswith(">")) or re.search(r"\s", value):
        raise ValueError(f"placeholder tokens look like '<name>' without spaces, got {short_repr(value)}")
    if value in CLIP_SPECIAL_TOKENS or (value.startswith("<|") and value.endswith("|>")):
        raise ValueError(f"{value!r} is a special token of the CLIP tokenizer, not a new placeholder; "
                         "choose a new name like '<object>'")
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
    seeds: list[int] = Field(default_factory=lambda: [0, 1])  # the original's inference.yaml
    width: PositiveInt = 768
    height: PositiveInt = 576
    # images (views x seeds) per UNet call, each 2 rows (CFG); "auto": the most that fit in free GPU
    # memory, measured at the run's shapes (8 off CUDA)
    eval_batch_size: PositiveInt | Literal["auto"] = "auto"
    decode_batch_size: PositiveInt | Literal["auto"] = "auto"  # images per VAE decode ("auto": fit, 4 off CUDA)
    # DPM-Solver++'s last step: "sigma_min" as the original (diffusers 0.14), "zero" as diffusers >= 0.26
    final_sigmas_type: Literal["sigma_min", "zero"] = "sigma_min"
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
    seed: int | None = Field(default=0, ge=0, lt=2**32)  # seeds torch, numpy and python's random
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

    @model_validator(mode="after")
    def _dtu_root_from_scan_dir(self) -> ViewNetiConfig:
        """The original's commands pass `.../Rectified/scanN` (or `.../Rectified` in mode 3); ours take the
        tree root and `data.dtu_scan`. Translate those forms once, here, so config.yaml records the root."""
        data = self.data
        path = data.train_data_dir
        if self.learnable_mode == 0 or path is None or _looks_like_tree_root(path):
            return self
        scan_dir = re.fullmatch(r"scan(\d+)", path.name) if path.parent.name == "Rectified" else None
        if scan_dir is not None:
            scan = int(scan_dir.group(1))
            if self.learnable_mode == 3:
                raise ValueError(f"data.train_data_dir {path} is one scan's directory, but mode 3 pretrains on "
                                 f"data.dtu_pretrain_scans: give the DTU tree {path.parent.parent}")
            if "dtu_scan" in data.model_fields_set and data.dtu_scan != scan:
                raise ValueError(f"data.train_data_dir {path} is the directory of scan {scan}, but data.dtu_scan "
                                 f"is {data.dtu_scan}: drop one of them or make them agree")
            self.data = data.model_copy(update={"train_data_dir": path.parent.parent, "dtu_scan": scan})
            logger.info("data.train_data_dir %s is a scan directory: using the DTU tree %s with data.dtu_scan %d",
                        path, path.parent.parent, scan)
        elif path.name == "Rectified":
            self.data = data.model_copy(update={"train_data_dir": path.parent})
            logger.info("data.train_data_dir %s is the Rectified folder: using the DTU tree %s", path, path.parent)
        return self


def _looks_like_tree_root(path: Path) -> bool:
    """A DTU tree (Rectified/, Calibration/) or a cameras.json capture folder, whatever its name."""
    return any((path / name).exists() for name in ("Rectified", "Calibration", "cameras.json"))


def check_learnable_mode(mode: int) -> int:
    if mode in RETIRED_MODES:
        raise ValueError(f"learnable_mode {mode} is not supported: {RETIRED_MODES[mode]}")
    if mode not in LEARNABLE_MODES:
        raise ValueError(f"unknown learnable_mode {mode}; supported modes are {list(LEARNABLE_MODES)}")
    return mode


# ---- loading -----------------------------------------------------------------------------------


MAX_ERROR_LINES = 20  # a 50 MB list of bad items must not give a 50 MB message
MAX_ERROR_LINE = 300


def error_lines(exc: ValidationError, unknown: str) -> list[str]:
    """One short line per pydantic error: dotted key, message, at most a prefix of the bad value."""
    errors = exc.errors(include_url=False, include_context=False)
    lines = []
    for err in errors[:MAX_ERROR_LINES]:
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = unknown
        shown = err["type"] != "extra_forbidden" and not isinstance(err["input"], dict)  # not a whole section
        line = f"  {key}: {message}" + (f" (got {short_repr(err['input'])})" if shown else "")
        lines.append(line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 3] + "...")
    if len(errors) > MAX_ERROR_LINES:
        lines.append(f"  ... and {len(errors) - MAX_ERROR_LINES} more")
    return lines


def _format_validation_error(exc: ValidationError) -> str:
    lines = error_lines(exc, "unknown key (check the spelling; see `viewneti config show` for all keys)")
    return "invalid configuration:\n" + "\n".join(lines)


# Keys earlier versions wrote into run directories' config.yaml: dropped on load so old runs still load.
RETIRED_KEYS = {"debug": "it was read by nothing (eval.num_denoising_steps shortens sampling)"}


def validate_config(data: dict[str, Any]) -> ViewNetiConfig:
    """Build the config from a plain dict, turning pydantic errors into a readable ConfigError."""
    retired = [key for key in RETIRED_KEYS if key in data]
    if retired:
        data = {k: v for k, v in data.items() if k not in RETIRED_KEYS}
        for key in retired:
            logger.info("ignoring the retired config key %r: %s", key, RETIRED_KEYS[key])
    try:
        return ViewNetiConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def parse_overrides(args: Sequence[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Parse `--a.b value` / `--a.b=value` pairs into a nested dict, each value converted by the type of
    the field of `model` (default `ViewNetiConfig`) it sets; see `convert_override`."""
    model = model or ViewNetiConfig
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
        _set_dotted(nested, key, convert_override(key, raw, model))
    return nested


_NULLS = ("null", "Null", "NULL", "~")
_UNKNOWN = object()


def convert_override(key: str, raw: str, model: type[BaseModel]) -> Any:
    """The value of `--key raw` for the field `key` of `model`.

    Strings stay strings where the field holds text (so `--optim.mixed_precision no` and
    `--log.exp_name 2024` mean what they say); numbers and booleans are read as YAML scalars; lists and
    mappings are read as YAML with every item converted by its own type; 'null' unsets an optional field.
    An unknown key keeps the raw text: validation then names it.
    """
    annotation = _field_annotation(model, key)
    if annotation is _UNKNOWN:
        return raw
    if _is_structured(annotation) and not (_admits_none(annotation) and raw in _NULLS):
        try:
            value = load_yaml_text(raw, BoundedBaseLoader)  # structure only: every scalar stays a string
        except YAMLLimitError as exc:
            raise ConfigError(f"override --{key} refused: {exc}") from None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override --{key}: {short_repr(raw)} is not a YAML list or mapping ({problem})") from None
        return _convert(value, annotation)
    return _convert(raw, annotation)


def _field_annotation(model: type[BaseModel], dotted: str) -> Any:
    annotation: Any = model
    for part in dotted.split("."):
        section = _model_of(annotation)
        if section is None or part not in section.model_fields:
            return _UNKNOWN
        annotation = section.model_fields[part].annotation
    return annotation


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (`X | None`, `Optional[X]`), else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:  # PositiveInt = Annotated[int, Gt(0)]
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for member in map(_strip, _members(annotation)):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _admits_none(annotation: Any) -> bool:
    return type(None) in _members(annotation)


def _is_structured(annotation: Any) -> bool:
    return any(
        _model_of(m) is not None or typing.get_origin(m) in (list, tuple, set, frozenset, dict)
        for m in map(_strip, _members(annotation))
    )


def _is_text(annotation: Any) -> bool:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(v, str) for v in typing.get_args(annotation))
    return annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath))


def _convert(value: Any, annotation: Any) -> Any:
    """Convert the strings inside a BaseLoader value (strings, lists, dicts) by the annotation."""
    annotation = _strip(annotation)
    members = [m for m in map(_strip, _members(annotation)) if m is not type(None)]
    if isinstance(value, str) and _admits_none(annotation) and value in _NULLS:
        return None
    if len(members) == 1 and members[0] is not annotation:
        return _convert(value, members[0])
    model = _model_of(annotation)
    if isinstance(value, dict):
        if model is not None:
            return {k: _convert(v, model.model_fields[k].annotation) if k in model.model_fields else v
                    for k, v in value.items()}
        args = typing.get_args(annotation)
        return {k: _convert(v, args[1] if len(args) == 2 else Any) for k, v in value.items()}
    if isinstance(value, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return [_convert(v, args[0] if len(args) == 1 else Any) for v in value]
    if not isinstance(value, str) or any(_is_text(m) for m in members):
        return value
    return _parse_scalar(value)


def _parse_scalar(raw: str) -> Any:
    """A YAML scalar for a number or boolean field ('3000', 'true'), plus floats like '1e-3' that YAML 1.1 misses."""
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
    """A config file within the limits of `safe_io` (1 MiB, nesting, alias expansion)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = read_yaml_file(path, "config file") or {}
    except ArtifactError as exc:
        raise ConfigError(str(exc)) from None
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
