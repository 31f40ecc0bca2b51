"""DTU novel-view metrics (DESIGN 3.9): masked PSNR, SSIM and LPIPS (VGG) in two protocols, batched on a device.

Preprocessing follows the original ViewNeTI evaluation: ground truth is first resized to 768x576 with
PIL bicubic, then prediction and ground truth (8-bit) are bicubic-resized (antialiased, rounded back to
8 bits, like torchvision's `Resize` on uint8 tensors) to 300x400 (H x W). Masks are bicubic-resized to
300x400 and binarised at > 0.01 after scaling to [0, 1].

- "viewneti": every rendered view, masked-out pixels black for SSIM/LPIPS.
- "regnerf": the 25 standard DTU test views only, masked-out pixels white for SSIM/LPIPS (the
  sparse-view NeRF protocol), so numbers compare with NeRF baselines.

PSNR is the same in both: MSE = sum((gt*m - pred*m)^2) / sum(m) over the 3 channels.

SSIM re-implements `skimage.metrics.structural_similarity` with its defaults (uniform 7x7 window,
sample covariance, K1=0.01, K2=0.03, channel axis 0, mean over the valid interior), in float64.
LPIPS re-implements the `lpips` package's VGG variant (v0.1) so it can run batched on any device and
so that the backbone weights are never downloaded or replaced behind the user's back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

EVAL_SIZE = (300, 400)  # (H, W) every image is compared at
GT_RESIZE = (768, 576)  # (W, H) ground truth is resized to first, the render size of the method
MASK_THRESHOLD = 0.01
ASPECT = 0.75  # H / W of DTU images (1600x1200) and of the method's renders (768x576)
ASPECT_TOLERANCE = 0.01

# torchvision's ImageNet VGG16 (models.VGG16_Weights.IMAGENET1K_V1), found in the torch hub cache.
VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_SHA256_PREFIX = "397923af"


class MissingWeightsError(FileNotFoundError):
    """Pretrained network weights the metric needs are not on disk (we never download or substitute)."""


@dataclass(frozen=True)
class Protocol:
    name: str
    background: str  # colour of masked-out pixels for SSIM / LPIPS: "black" or "white"
    dtu_test_views_only: bool  # evaluate only the 25 standard DTU test views


PROTOCOLS = {
    "viewneti": Protocol("viewneti", "black", dtu_test_views_only=False),
    "regnerf": Protocol("regnerf", "white", dtu_test_views_only=True),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown metric protocol {name!r}; choose from {sorted(PROTOCOLS)}") from None


# ---- preprocessing -----------------------------------------------------------------------------


def check_aspect(height: int, width: int, what: str) -> None:
    """DTU images are 4:3 landscape; anything else cannot be compared pixel to pixel after resizing."""
    if abs(height / width - ASPECT) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{what} is {width}x{height} (W x H, aspect H/W = {height / width:.3f}) but DTU images are 4:3 "
            f"(H/W = {ASPECT}, e.g. 768x576 or 1600x1200): predictions and ground truth must have the same "
            "aspect ratio to be compared"
        )


def resize_bicubic_uint8(images: torch.Tensor, size: tuple[int, int] = EVAL_SIZE) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 (N, C, H, W) images to `size` (H, W), rounded back to uint8.

    Identical to torchvision's `Resize(size, BICUBIC)` on uint8 tensors (what the original evaluation
    used), but batched on whatever device the images are on.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def load_ground_truth(path: Path) -> torch.Tensor:
    """A DTU image as uint8 (3, 576, 768): PIL bicubic resize to the method's render size first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth image {path} does not exist")
    with Image.open(path) as img:
        check_aspect(img.height, img.width, f"ground-truth image {path}")
        img = img.convert("RGB").resize(GT_RESIZE, Image.BICUBIC)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def load_mask(path: Path, size: tuple[int, int] = EVAL_SIZE) -> torch.Tensor:
    """A DTU object mask as a bool (H, W) tensor at `size`: bicubic resize, then > 0.01 of full scale."""
    path = Path(path)
    with Image.open(path) as img:
        check_aspect(img.height, img.width, f"mask {path}")
        arr = np.asarray(img.convert("L").resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(arr > MASK_THRESHOLD)


# ---- metrics -----------------------------------------------------------------------------------


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W), (N, 1, H, W) or (N, C, H, W) masks -> float (N, C, H, W) of 0/1 like `like`."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    return mask.to(like.dtype).expand_as(like)


def masked_mse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image sum((gt*m - pred*m)^2) / sum(m), m broadcast over the colour channels -> (N,).

    An empty mask gives NaN (there is nothing to compare), never a made-up number.
    """
    m = _as_mask(mask, pred)
    err = ((gt * m - pred * m) ** 2).flatten(1).sum(1)
    return err / m.flatten(1).sum(1)


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.log10(mse)


def apply_background(images: torch.Tensor, mask: torch.Tensor, background: str) -> torch.Tensor:
    """Masked-out pixels set to black (x*m) or white (x*m + 1 - m)."""
    m = _as_mask(mask, images)
    if background == "black":
        return images * m
    if background == "white":
        return images * m + (1 - m)
    raise ValueError(f"background must be 'black' or 'white', got {background!r}")


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 7) -> torch.Tensor:
    """Per-image SSIM of (N, C, H, W) batches, equal to skimage's structural_similarity with
    `channel_axis=0, data_range=data_range` and its defaults (uniform window, sample covariance).

    skimage filters with a reflecting border and then crops (win_size - 1) / 2 pixels on each side, so
    only windows that lie fully inside the image count: that is exactly a 'valid' average pool.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if win_size % 2 != 1 or min(x.shape[-2:]) < win_size:
        raise ValueError(f"win_size must be odd and at most the image side, got {win_size} for {tuple(x.shape[-2:])}")
    x, y = x.to(torch.float64), y.to(torch.float64)

    def mean_filter(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = mean_filter(x), mean_filter(y)
    uxx, uyy, uxy = mean_filter(x * x), mean_filter(y * y), mean_filter(x * y)
    n = win_size**2
    cov_norm = n / (n - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))  # per-channel means have equal sizes: their mean is the overall mean


# ---- LPIPS (VGG, v0.1) ---------------------------------------------------------------------------

# torchvision VGG16 `features` up to relu5_3 (configuration "D" without the last max-pool).
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

_verified_files: dict[tuple[str, int, float], bool] = {}


def vgg16_weights_path() -> Path:
    """Where torchvision keeps the VGG16 file: $TORCH_HOME/hub/checkpoints/ (torch.hub.get_dir())."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def lpips_linear_weights_path() -> Path:
    """The VGG linear-layer weights shipped inside the `lpips` package (weights/v0.1/vgg.pth)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError("the `lpips` package is not installed; its weights/v0.1/vgg.pth holds the "
                                  "LPIPS linear layers (pip install lpips==0.1.4)")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
    if not path.is_file():
        raise MissingWeightsError(f"LPIPS linear-layer weights {path} are missing from the lpips package; reinstall lpips")
    return path


def _missing_vgg_message(path: Path, problem: str) -> str:
    return (
        f"LPIPS (VGG) needs torchvision's ImageNet VGG16 weights file {VGG16_FILE}: {problem}. "
        f"Expected at {path} (the torch hub cache, $TORCH_HOME/hub/checkpoints/). "
        f"Download it from {VGG16_URL} on a machine with internet access, e.g. "
        f"`curl -L --create-dirs -o {path} {VGG16_URL}`, or set TORCH_HOME to a directory that has "
        f"hub/checkpoints/{VGG16_FILE}. Random weights are never substituted; tests may ask for "
        "backbone_weights='random' explicitly, and such results are labelled lpips_backbone='random'."
    )


def check_lpips_weights(backbone_weights: str) -> str:
    """Fail fast (MissingWeightsError) when LPIPS will need the pretrained VGG16 file and it is absent
    or damaged; run before hours of work whose last step is the evaluation. Returns what will be used."""
    if backbone_weights != "pretrained":
        return backbone_weights
    path = vgg16_weights_path()
    _check_vgg_file(path)
    return str(path)


def _check_vgg_file(path: Path) -> None:
    """The file name carries the first 8 hex digits of its sha256 (torch hub convention): verify once."""
    if not path.is_file():
        raise MissingWeightsError(_missing_vgg_message(path, "the file is not there"))
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime)
    if key in _verified_files:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(VGG16_SHA256_PREFIX):
        raise MissingWeightsError(_missing_vgg_message(
            path, f"the file there has sha256 {digest.hexdigest()[:16]}..., not {VGG16_SHA256_PREFIX}... "
                  "(truncated or a different file)"))
    _verified_files[key] = True


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS with the VGG16 trunk, numerically the `lpips` package's `LPIPS(net="vgg", version="0.1")`.

    backbone_weights:
      "pretrained": torchvision's ImageNet VGG16 from the torch hub cache (see `vgg16_weights_path`);
                    a clear MissingWeightsError if it is absent — never a silent substitute.
      "random":     a seeded, torchvision-style random init, for tests only; `backbone_label` says so
                    and evaluation tables carry it in their `lpips_backbone` column.
    The linear layers always come from the `lpips` package (they ship with it, no download).
    Inputs are (N, 3, H, W) in [-1, 1]; the output is (N,).
    """

    def __init__(self, backbone_weights: str = "pretrained", seed: int = 0, vgg_path: Path | None = None):
        super().__init__()
        if backbone_weights not in ("pretrained", "random"):
            raise ValueError(f"backbone_weights must be 'pretrained' or 'random', got {backbone_weights!r}")
        self.backbone_label = backbone_weights
        self.features = _vgg_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        if backbone_weights == "pretrained":
            self._load_pretrained_backbone(Path(vgg_path) if vgg_path is not None else vgg16_weights_path())
        else:
            self._random_backbone(seed)
        lin_state = torch.load(lpips_linear_weights_path(), map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            lin.weight.data.copy_(lin_state[f"lin{k}.model.1.weight"])
        self.requires_grad_(False)
        self.eval()

    def _load_pretrained_backbone(self, path: Path) -> None:
        _check_vgg_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        ours = {f"{i}.{p}": state[f"features.{i}.{p}"] for i, m in enumerate(self.features)
                if isinstance(m, nn.Conv2d) for p in ("weight", "bias")}
        self.features.load_state_dict(ours, strict=True)

    def _random_backbone(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale
        total = torch.zeros(n, device=x.device, dtype=x.dtype)
        taps = iter(zip(_VGG_TAPS, self.lins, strict=True))
        tap, lin = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == tap:
                f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                total = total + lin((f[:n] - f[n:]) ** 2).mean(dim=(1, 2, 3))
                tap, lin = next(taps, (None, None))
        return total


# ---- one batch of images, one protocol ---------------------------------------------------------------


def image_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    protocol: str | Protocol,
    lpips_model: LPIPS | None = None,
) -> dict[str, torch.Tensor]:
    """psnr, mse, ssim, lpips (NaN without a model) per image for (N, 3, H, W) images in [0, 1].

    `mask` is bool/0-1 (N, H, W) or (N, 1, H, W); all ones for an unmasked scan.
    """
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    pred, gt = pred.float(), gt.float()
    mse = masked_mse(pred, gt, mask)
    pred_bg, gt_bg = apply_background(pred, mask, proto.background), apply_background(gt, mask, proto.background)
    out = {"mse": mse, "psnr": mse_to_psnr(mse), "ssim": ssim(pred_bg, gt_bg)}
    if lpips_model is not None:
        with torch.no_grad():
            out["lpips"] = lpips_model(pred_bg * 2 - 1, gt_bg * 2 - 1)
    else:
        out["lpips"] = torch.full_like(mse, math.nan)
    return {k: v.detach().double().cpu() for k, v in out.items()}
