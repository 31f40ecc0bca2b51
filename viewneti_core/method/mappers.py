"""The ViewNeTI mappers: small MLPs that predict token embeddings from (timestep, layer[, camera]).

Final architecture of the paper (DESIGN 3.3): inputs rescaled to [-1, 1], random Fourier features
with per-input frequency scales (frequencies *added* across inputs), a 2-hidden-layer MLP with
LayerNorm + LeakyReLU, and an output of 2*D numbers: a word embedding (L2-normalised, rescaled to the
norm of the super-category word) and a bypass vector added after the text encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from viewneti_core.atomic_files import save_safetensors
from viewneti_core.data.cameras import CameraNormalization, camera_dim, check_camera_batch, normalize_cameras
from viewneti_core.errors import ArtifactError
from viewneti_core.safe_io import read_json_file, read_safetensors, require

NUM_TRAIN_TIMESTEPS = 1000


class FourierFeatures(nn.Module):
    """concat(sin(W x), cos(W x)) with W ~ N(0, 1) drawn once from torch seed 0, column i scaled by sigma_i.

    W is a persistent buffer: it is saved with the mapper, so a checkpoint reproduces its encoding
    exactly even if the random generator changed between torch versions.
    """

    def __init__(self, sigmas: Sequence[float], num_features: int = 32, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(num_features, len(sigmas), generator=generator)
        self.register_buffer("weight", weight * torch.tensor(list(sigmas), dtype=torch.float32))

    @property
    def out_dim(self) -> int:
        return 2 * self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = x @ self.weight.T
        return torch.cat([projected.sin(), projected.cos()], dim=-1)


@dataclass
class MapperConfig:
    """Everything needed to rebuild a mapper; stored as JSON next to its safetensors weights."""

    kind: str  # "object" or "view"
    output_dim: int  # D, the text-encoder width
    target_norm: float  # norm of the super-category token's input embedding
    sigma_t: float = 0.03
    sigma_l: float = 2.0
    sigma_camera: float = 0.5
    hidden_dim: int = 64
    num_fourier_features: int = 32
    num_unet_layers: int = 16
    camera_normalization: dict | None = None  # CameraNormalization.to_dict() for view mappers
    token: str = ""
    super_category_token: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def camera(self) -> CameraNormalization | None:
        if self.camera_normalization is None:
            return None
        return CameraNormalization.from_dict(self.camera_normalization)


class NeTIMapper(nn.Module):
    """M(t, l[, camera]) -> (word embedding, bypass vector), each of size D."""

    def __init__(self, config: MapperConfig):
        super().__init__()
        if config.kind not in ("object", "view"):
            raise ValueError(f"mapper kind must be 'object' or 'view', got {config.kind!r}")
        camera = config.camera
        if config.kind == "view" and camera is None:
            raise ValueError("a view mapper needs camera normalisation ranges (camera_normalization)")
        if config.kind == "object" and camera is not None:
            raise ValueError("an object mapper takes no camera input")
        self.config = config
        self.camera_dim = camera.dim if camera is not None else 0
        sigmas = [config.sigma_t, config.sigma_l] + [config.sigma_camera] * self.camera_dim
        self.fourier = FourierFeatures(sigmas, config.num_fourier_features)
        width = config.hidden_dim
        self.net = nn.Sequential(
            nn.Linear(self.fourier.out_dim, width),
            nn.LayerNorm(width),
            nn.LeakyReLU(),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.LeakyReLU(),
            nn.Linear(width, 2 * config.output_dim),
        )
        self.register_buffer("target_norm", torch.tensor(float(config.target_norm)))
        if camera is not None:
            self.register_buffer("camera_min", torch.tensor(camera.minimum, dtype=torch.float32))
            self.register_buffer("camera_max", torch.tensor(camera.maximum, dtype=torch.float32))

    @property
    def is_view_mapper(self) -> bool:
        return self.camera_dim > 0

    def forward(
        self, timesteps: torch.Tensor, layer_indices: torch.Tensor, cameras: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """timesteps in [0, 1000), layer indices in [0, L), raw cameras (N, C) -> two float32 (N, D) tensors.

        Always float32, autocast or not: the Fourier features of t (sigma 0.03) resolve differences that
        bf16 rounds away, and a mapper trained under bf16 autocast would otherwise compute something
        else than the same mapper at float32 inference (the original trained in float32; its inference ran
        the mappers under float16 autocast, a deviation docs/fidelity.md explains).
        """
        device = self.target_norm.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward_fp32(timesteps, layer_indices, cameras, device)

    def _forward_fp32(self, timesteps: torch.Tensor, layer_indices: torch.Tensor, cameras: torch.Tensor | None,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = timesteps.to(device=device, dtype=torch.float32) / NUM_TRAIN_TIMESTEPS * 2 - 1
        layer = layer_indices.to(device=device, dtype=torch.float32) / self.config.num_unet_layers * 2 - 1
        inputs = [t[:, None], layer[:, None]]
        if self.is_view_mapper:
            if cameras is None:
                raise ValueError("the view mapper needs a camera for every row")
            cameras = check_camera_batch(cameras, self.camera_dim).to(device=device, dtype=torch.float32)
            inputs.append(normalize_cameras(cameras, self.camera_min, self.camera_max))
        out = self.net(self.fourier(torch.cat(inputs, dim=-1)))
        word, bypass = out.chunk(2, dim=-1)
        word = word / word.norm(dim=-1, keepdim=True).clamp_min(1e-12) * self.target_norm
        return word, bypass


def build_mapper(
    kind: str,
    output_dim: int,
    target_norm: float,
    *,
    token: str,
    super_category_token: str,
    sigma_t: float = 0.03,
    sigma_l: float = 2.0,
    sigma_camera: float = 0.5,
    hidden_dim: int = 64,
    num_fourier_features: int = 32,
    num_unet_layers: int = 16,
    camera_normalization: CameraNormalization | None = None,
) -> NeTIMapper:
    if camera_normalization is not None:
        camera_dim(camera_normalization.representation)  # validates the representation
    config = MapperConfig(
        kind=kind,
        output_dim=output_dim,
        target_norm=float(target_norm),
        sigma_t=sigma_t,
        sigma_l=sigma_l,
        sigma_camera=sigma_camera,
        hidden_dim=hidden_dim,
        num_fourier_features=num_fourier_features,
        num_unet_layers=num_unet_layers,
        camera_normalization=camera_normalization.to_dict() if camera_normalization is not None else None,
        token=token,
        super_category_token=super_category_token,
    )
    return NeTIMapper(config)


# ---- persistence (safetensors + JSON, never pickle) ---------------------------------------------


def save_mapper(mapper: NeTIMapper, path_stem: Path | str) -> tuple[Path, Path]:
    """Write `<stem>.safetensors` and `<stem>.json`; the caller publishes the directory atomically."""
    stem = Path(path_stem)
    weights = stem.with_suffix(".safetensors")
    meta = stem.with_suffix(".json")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in mapper.state_dict().items()}
    save_safetensors(tensors, weights)
    meta.write_text(json.dumps(asdict(mapper.config), indent=2) + "\n")
    return weights, meta


def load_mapper(path_stem: Path | str, device: torch.device | str = "cpu") -> NeTIMapper:
    """Rebuild a mapper from `<stem>.json` and `<stem>.safetensors`, checking both first: a damaged,
    truncated or foreign file fails with an ArtifactError naming it, never a raw traceback."""
    stem = Path(path_stem)
    weights = stem.with_suffix(".safetensors")
    meta = stem.with_suffix(".json")
    for path in (weights, meta):
        if not path.is_file():
            raise FileNotFoundError(f"mapper file {path} is missing")
    config = mapper_config_from_json(read_json_file(meta, "mapper metadata"), str(meta))
    try:
        mapper = NeTIMapper(config)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ArtifactError(f"{meta}: not a usable mapper description ({exc})") from None
    tensors = read_safetensors(weights, "mapper weights")
    expected = mapper.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{weights}: mapper weights do not match {meta.name} (missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]})")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape) or not value.is_floating_point():
            raise ArtifactError(f"{weights}: tensor {key!r} is {value.dtype} {tuple(value.shape)}, expected "
                                f"floating point {tuple(expected[key].shape)} (as {meta.name} describes)")
        if not torch.isfinite(value).all():
            raise ArtifactError(f"{weights}: tensor {key!r} holds NaN or infinite values")
    mapper.load_state_dict(tensors)
    return mapper.to(device)


_MAX_DIM = 1 << 16  # no real text encoder, MLP or UNet comes near; a garbage 10**12 must not allocate
_CONFIG_FIELDS = {  # MapperConfig field -> (JSON types, required)
    "kind": (str, True), "output_dim": (int, True), "target_norm": ((int, float), True),
    "sigma_t": ((int, float), False), "sigma_l": ((int, float), False), "sigma_camera": ((int, float), False),
    "hidden_dim": (int, False), "num_fourier_features": (int, False), "num_unet_layers": (int, False),
    "camera_normalization": ((dict, type(None)), False), "token": (str, False),
    "super_category_token": (str, False), "extra": (dict, False),
}


def mapper_config_from_json(data: dict, where: str) -> MapperConfig:
    """A MapperConfig from its JSON, every key checked for presence, type and range."""
    unknown = sorted(set(data) - set(_CONFIG_FIELDS))
    if unknown:
        raise ArtifactError(f"{where}: unknown mapper key(s) {unknown[:5]}: not a ViewNeTI mapper description")
    values = {key: require(data, key, kinds, where) for key, (kinds, needed) in _CONFIG_FIELDS.items()
              if needed or key in data}
    for key in ("output_dim", "hidden_dim", "num_fourier_features", "num_unet_layers"):
        if key in values and not 1 <= values[key] <= _MAX_DIM:
            raise ArtifactError(f"{where}: {key} must be in 1..{_MAX_DIM}, got {values[key]}")
    for key in ("target_norm", "sigma_t", "sigma_l", "sigma_camera"):
        if key in values and not (math.isfinite(values[key]) and values[key] > 0):
            raise ArtifactError(f"{where}: {key} must be a positive number, got {values[key]}")
    camera = values.get("camera_normalization")
    if camera is not None:
        try:
            normalization = CameraNormalization.from_dict(camera)
            ok = len(normalization.minimum) == len(normalization.maximum) == camera_dim(normalization.representation)
            ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v)
                            for v in (*normalization.minimum, *normalization.maximum))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ArtifactError(f"{where}: camera_normalization must be {{representation, min, max}} with one "
                                "finite number per camera element")
    return MapperConfig(**values)
