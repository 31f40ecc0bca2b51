"""Flow parameters: the benchmark configuration as pydantic models around `ViewNetiConfig`.

The Prefect UI renders these as a validated form; unknown keys, negative steps or an n_views outside
{1, 3, 6, 9} are rejected before any work starts. The per-run ViewNeTI configurations (mode-3
pretraining, mode-5 fitting of one (scan, n_views) item) are derived here from one `BenchmarkConfig`
by pure functions, so the benchmark, the per-scan and the pretrain flows cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from tasks.runtime import item_name, parse_item_name  # noqa: F401 - re-exported for flows
from viewneti_core.base_model.model_names import looks_local
from viewneti_core.config import (
    ConfigError,
    ViewNetiConfig,
    check_path_fits,
    deep_merge,
    error_lines,
    parse_overrides,
    read_yaml,
)
from viewneti_core.data import dtu

NViews = Literal[1, 3, 6, 9]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _path_fits_filesystem(cls, value: Any) -> Any:
        return check_path_fits(value) if isinstance(value, Path) else value


def _default_pretrain() -> ViewNetiConfig:
    return ViewNetiConfig.model_validate({
        "learnable_mode": 3,
        # the original's train_m3_88scenes.yaml: 50k steps (the released view mapper), checkpoints every 5k
        "log": {"save_steps": 5000, "checkpoints_total_limit": 5},
        "data": {"dtu_subset": 0, "augmentation": "pretraining"},
        "optim": {"max_train_steps": 50000, "mixed_precision": "bf16"},
        "eval": {"validation_steps": 5000},
    })


def _default_fit() -> ViewNetiConfig:
    return ViewNetiConfig.model_validate({
        "learnable_mode": 5,
        "log": {"save_steps": 500, "checkpoints_total_limit": 2},
        "data": {"augmentation": "fitting"},
        "optim": {"max_train_steps": 3000, "mixed_precision": "bf16"},
    })


class DataSettings(_Strict):
    """Where the DTU archives come from and where the prepared tree goes."""

    sources: list[str] = Field(
        default_factory=lambda: [dtu.RECTIFIED_URL, dtu.SAMPLESET_URL],
        description="DTU archives: http(s) URLs, zip files or extracted trees. The masks (RegNeRF/IDR "
                    "release) have no official URL: add their zip here for the masked metrics.",
    )
    sha256: dict[str, str] = Field(default_factory=dict, description="source (or its file name) -> sha256")
    root: Path | None = Field(default=None, description="prepared DTU tree; default RUN_DIR/data/dtu")
    cache_dir: Path | None = Field(default=None, description="download cache; default ROOT/.downloads")
    light: int = Field(default=dtu.DEFAULT_LIGHT, ge=0, le=dtu.NUM_LIGHTS - 1)

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one DTU source (URL or path) is needed")
        return value


class EvaluationSettings(_Strict):
    protocols: list[Literal["viewneti", "regnerf"]] = Field(default_factory=lambda: ["viewneti", "regnerf"])
    lpips_weights: Literal["pretrained", "random", "none"] = Field(
        default="pretrained",
        description="'pretrained' needs the LPIPS VGG weights; 'random' uses a random backbone and is "
                    "labelled so in every table (machinery check only); 'none' skips LPIPS.",
    )
    device: str = Field(default="auto", description="device of the metric networks: auto, cpu, cuda[:N]")
    eval_size: tuple[PositiveInt, PositiveInt] = Field(
        default=(300, 400), description="(H, W) images are compared at; the protocol's is 300x400 - change "
                                        "it only for quick checks (recorded in every row)")
    batch_size: int = Field(default=8, ge=1)
    uncertainty: bool | None = Field(
        default=None, description="diversity, ensemble, best-of-N, std maps and AUSE across the seeds of each "
                                  "view; default (null): on when fit.eval.seeds has 2 or more seeds")

    @field_validator("protocols")
    @classmethod
    def _some_protocols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one evaluation protocol is needed")
        return list(dict.fromkeys(value))


class AdaptBounds(_Strict):
    """`cluster.adapt(minimum=..., maximum=...)`: workers (e.g. Slurm jobs) come and go with the load."""

    minimum: int = Field(default=0, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptBounds:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is above maximum ({self.maximum})")
        return self


class ClusterSettings(_Strict):
    """Where the GPU tasks run: `local` (the default), `{address: tcp://...}` or `{class: ..., kwargs: ...}`.

    `local` keeps the environment's choice (VIEWNETI_DASK_ADDRESS, else a local cluster with one worker
    per GPU, flows/cluster.py). A class is imported here, so a typo or a missing extra (`viewneti[slurm]`)
    fails when the configuration is read, not after the data was prepared; kwargs are checked against its
    signature where it has no `**kwargs`, else when the cluster starts, at the very start of the flow run.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    address: str | None = Field(default=None, description="a running Dask scheduler, e.g. tcp://scheduler:8786")
    class_: str | None = Field(default=None, alias="class",
                               description="import path of a Dask cluster class, e.g. dask_jobqueue.SLURMCluster")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the cluster class")
    adapt: AdaptBounds | None = Field(default=None, description="adaptive scaling bounds (cluster.adapt)")

    @model_validator(mode="before")
    @classmethod
    def _local_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value != "local":
                raise ValueError(f"use 'local', {{address: tcp://...}} or {{class: ..., kwargs: ...}}, not {value!r}")
            return {}
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|ws|wss|inproc|ucx)://\S+", value):
            raise ValueError("expected a Dask scheduler address like tcp://host:8786")
        return value

    @field_validator("class_")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            from flows.cluster import import_cluster_class

            import_cluster_class(value)  # ValueError naming the module / extra to install
        return value

    @field_validator("kwargs")
    @classmethod
    def _known_kwargs(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("class_") is not None:
            from flows.cluster import check_cluster_kwargs

            check_cluster_kwargs(info.data["class_"], value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterSettings:
        if self.address and self.class_:
            raise ValueError("give either address (a running cluster) or class (one to start), not both")
        if self.class_ is None and (self.kwargs or self.adapt):
            raise ValueError("kwargs and adapt need a cluster class ('class')")
        return self

    @property
    def is_local(self) -> bool:
        return self.address is None and self.class_ is None

    def as_yaml_value(self) -> str | dict[str, Any]:
        if self.is_local:
            return "local"
        if self.address:
            return {"address": self.address}
        out: dict[str, Any] = {"class": self.class_, "kwargs": self.kwargs}
        if self.adapt is not None:
            out["adapt"] = self.adapt.model_dump()
        return out


class ExecutionSettings(_Strict):
    """Retries and caching of the pipeline's tasks, and the Dask cluster their GPU tasks run on."""

    retries: int = Field(default=2, ge=0, le=10, description="retries of a task after a transient failure")
    retry_delay_s: float = Field(default=30.0, ge=0)
    refresh_cache: bool = Field(default=False, description="recompute every task even when a cached result exists")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings,
                                     description="'local', {address: tcp://...} or {class: ..., kwargs: {...}, "
                                                 "adapt: {minimum, maximum}} (docs/pipeline.md)")

    @field_serializer("cluster")
    def _cluster_as_written(self, cluster: ClusterSettings) -> str | dict[str, Any]:
        return cluster.as_yaml_value()  # `local` stays `local`; `class` keeps its YAML name


class BenchmarkConfig(_Strict):
    """The whole DTU benchmark: data, pretraining, per-(scan, n_views) fitting, inference, metrics."""

    name: str = Field(default="dtu-benchmark", description="used in run names and artifact keys")
    run_dir: Path = Field(default=Path("outputs/benchmark/dtu-benchmark"),
                          description="everything of this benchmark lives here (shared storage on a cluster)")
    test_scans: list[int] = Field(default_factory=lambda: list(dtu.TEST_SCANS))
    n_views: list[NViews] = Field(default_factory=lambda: [1, 3])
    views: list[int] | None = Field(
        default=None, description="cameras rendered per item; default: the protocol's 34 evaluation views")
    camera_path: tuple[int, int, int] | None = Field(
        default=None, description="also render each item along a camera path [from, to, frames] (an animated "
                                  "GIF beside its grids, shown in the report); default: none")
    pretrained_view_mapper: str | None = Field(
        default=None, description="a mode-3 run/checkpoint dir or registered name; skips pretraining")
    data: DataSettings = Field(default_factory=DataSettings)
    pretrain: ViewNetiConfig = Field(default_factory=_default_pretrain)
    fit: ViewNetiConfig = Field(default_factory=_default_fit)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
            raise ValueError("name must be lowercase letters, digits and dashes (it is used in artifact keys)")
        return value

    @field_validator("test_scans")
    @classmethod
    def _scans(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one test scan is needed")
        bad = [s for s in value if s not in dtu.ALL_SCANS]
        if bad:
            raise ValueError(f"{bad} are not DTU scans (1..128 without 78..81)")
        return sorted(set(value))

    @field_validator("n_views")
    @classmethod
    def _n_views(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one n_views value is needed")
        return sorted(set(value))

    @field_validator("views")
    @classmethod
    def _views(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("views must be omitted (all 34 evaluation views) or list at least one camera")
        bad = [v for v in value if not 0 <= v < dtu.NUM_VIEWS]
        if bad:
            raise ValueError(f"camera indices {bad} are outside 0..{dtu.NUM_VIEWS - 1}")
        return list(dict.fromkeys(value))

    @field_validator("camera_path")
    @classmethod
    def _camera_path(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is None:
            return None
        start, end, frames = value
        bad = [c for c in (start, end) if not 0 <= c < dtu.NUM_CAMERAS]
        if bad:
            raise ValueError(f"camera_path: cameras {bad} are outside 0..{dtu.NUM_CAMERAS - 1}")
        if not 2 <= frames <= 240:
            raise ValueError(f"camera_path: frames must be 2..240, got {frames}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        if self.pretrain.learnable_mode != 3:
            raise ValueError(f"pretrain.learnable_mode must be 3 (view-mapper pretraining), got {self.pretrain.learnable_mode}")
        if self.fit.learnable_mode != 5:
            raise ValueError(f"fit.learnable_mode must be 5 (object mapper with a frozen view mapper), got {self.fit.learnable_mode}")
        base_pre = self.pretrain.model.pretrained_model_name_or_path
        base_fit = self.fit.model.pretrained_model_name_or_path
        if self.pretrained_view_mapper is None and base_pre != base_fit:
            raise ValueError(
                f"pretrain.model.pretrained_model_name_or_path ({base_pre!r}) and fit.model.pretrained_model_name_or_path "
                f"({base_fit!r}) differ: the view mapper only works with the base model it was trained with")
        overlap = sorted(set(self.test_scans) & set(self.pretrain.data.dtu_pretrain_scans))
        if self.pretrained_view_mapper is None and overlap:
            raise ValueError(f"test scans {overlap} are also pretraining scans: the benchmark would be contaminated")
        return self

    # ---- derived values (paths are absolute once `resolved()` was called) ----

    def resolved(self, base: Path | None = None) -> BenchmarkConfig:
        """A copy with absolute run/data paths (relative ones are taken from `base` or the cwd)."""
        base = Path(base or Path.cwd())

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).absolute()

        out = self.model_copy(deep=True)
        out.run_dir = absolute(self.run_dir)
        out.data.root = absolute(self.data.root) if self.data.root is not None else out.run_dir / "data" / "dtu"
        if self.data.cache_dir is not None:
            out.data.cache_dir = absolute(self.data.cache_dir)
        out.data.sources = [s if "://" in s or Path(s).is_absolute() else str(absolute(Path(s))) for s in self.data.sources]
        # The runs' saved configurations are compared on resume: a relative model path from a deployment
        # and the absolute one of `viewneti-pipeline demo` must not look like different runs.
        for stage in (out.pretrain, out.fit):
            name = stage.model.pretrained_model_name_or_path
            if looks_local(name, base):  # the loader's rule; hub ids and builtin: names stay as they are
                stage.model.pretrained_model_name_or_path = str(absolute(Path(name).expanduser()))
        mapper = self.pretrained_view_mapper
        if mapper is not None and (base / Path(mapper).expanduser()).exists():  # else a registry name
            out.pretrained_view_mapper = str(absolute(Path(mapper).expanduser()))
        return out

    @property
    def items(self) -> list[tuple[int, int]]:
        return [(scan, n) for scan in self.test_scans for n in self.n_views]

    def needs_pretraining(self) -> bool:
        return self.pretrained_view_mapper is None

    def required_scans(self) -> list[int]:
        scans = set(self.test_scans)
        if self.needs_pretraining():
            scans |= set(self.pretrain.data.dtu_pretrain_scans)
        return sorted(scans)

    @property
    def pretrain_run_dir(self) -> Path:
        return self.run_dir / "pretrain"

    @property
    def items_dir(self) -> Path:
        return self.run_dir / "items"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    @property
    def results_dir(self) -> Path:
        """Prefect's persisted task results and cache records (JSON)."""
        return self.run_dir / "prefect-results"

    @property
    def ledger_dir(self) -> Path:
        return self.run_dir / "ledger"

    def item_dir(self, scan: int, n_views: int) -> Path:
        return self.items_dir / item_name(scan, n_views)


def pretrain_config(config: BenchmarkConfig) -> ViewNetiConfig:
    """The mode-3 run of this benchmark (run dir RUN_DIR/pretrain)."""
    return _with(config.pretrain, {
        "learnable_mode": 3,
        "data": {"train_data_dir": str(config.data.root), "dtu_lighting": config.data.light},
        "log": {"exp_dir": str(config.run_dir), "exp_name": "pretrain"},
    })


def item_config(config: BenchmarkConfig, scan: int, n_views: int, view_mapper: str) -> ViewNetiConfig:
    """The mode-5 run of one (scan, n_views) item (run dir RUN_DIR/items/scanS-Nview)."""
    return _with(config.fit, {
        "learnable_mode": 5,
        "data": {"train_data_dir": str(config.data.root), "dtu_lighting": config.data.light,
                 "dtu_scan": scan, "dtu_subset": n_views},
        "log": {"exp_dir": str(config.items_dir), "exp_name": item_name(scan, n_views)},
        "model": {"pretrained_view_mapper": view_mapper},
    })


def _with(base: ViewNetiConfig, update: dict[str, Any]) -> ViewNetiConfig:
    return ViewNetiConfig.model_validate(deep_merge(base.model_dump(mode="json"), update))


# ---- loading from YAML (the CLI and deployments) ---------------------------------------------------


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One short line per error (at most a prefix of each bad value; `config.error_lines`)."""
    lines = [f"  {prefix}{line[2:]}" if line.startswith("  ") else line for line in error_lines(exc, "unknown key")]
    return "invalid benchmark configuration:\n" + "\n".join(lines)


def validate_benchmark(data: dict[str, Any]) -> BenchmarkConfig:
    try:
        return BenchmarkConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_benchmark_config(path: Path | str | None = None,
                          overrides: Sequence[str] | dict[str, Any] = ()) -> BenchmarkConfig:
    """YAML file (optional) + `--section.key value` overrides -> validated BenchmarkConfig."""
    data = read_yaml(path) if path is not None else {}
    tree = overrides if isinstance(overrides, dict) else parse_overrides(overrides, BenchmarkConfig)
    return validate_benchmark(deep_merge(data, tree))
