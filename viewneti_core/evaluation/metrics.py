"""DTU novel-view metrics (DESIGN 3.9): masked PSNR, SSIM and LPIPS (VGG) in two protocols, batched on a device.

Preprocessing follows the original ViewNeTI evaluation: ground truth is first resized to 768x576 with
PIL bicubic, then prediction and ground truth (8-bit) are bicubic-resized WITHOUT antialiasing to
300x400 (H x W) and rounded back to 8 bits: the original ran torchvision 0.14, whose tensor `Resize`
did not antialias (torchvision >= 0.17 antialiases by default, which raises PSNR by ~0.4 dB on real
photos). Masks are PIL-bicubic-resized to 300x400 and binarised at > 0.01 after scaling to [0, 1].

- "viewneti": every rendered view, masked-out pixels black for SSIM/LPIPS.
- "regnerf": the 25 standard DTU test views only, masked-out pixels white for SSIM/LPIPS (the
  sparse-view NeRF protocol), so numbers compare with NeRF baselines.

PSNR is the same in both: MSE = sum((gt*m - pred*m)^2) / sum(m) over the 3 channels.

SSIM re-implements `skimage.metrics.structural_similarity` with its defaults (uniform 7x7 window,
sample covariance, K1=0.01, K2=0.03, channel axis 0, mean over the valid interior), in float64.
LPIPS is the `lpips` package's VGG variant (v0.1), batched on any device, behind checks that name a
missing weights file before anything is built: the backbone weights are never downloaded or
replaced behind the user's back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from viewneti_core.images import load_image

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
    """Bicubic resize (no antialiasing) of uint8 (N, C, H, W) images to `size` (H, W), back to uint8.

    What torchvision 0.14's `Resize(size, BICUBIC)` did to uint8 tensors in the original evaluation:
    float bicubic interpolation (a = -0.75, half-pixel centres, edge clamping), clamp to [0, 255],
    round. Today's torchvision would need `antialias=False` to do the same.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=tuple(size), mode="bicubic", antialias=False, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def load_ground_truth(path: Path) -> torch.Tensor:
    """A DTU image as uint8 (3, 576, 768): PIL bicubic resize to the method's render size first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth image {path} does not exist")
    img = load_image(path, "RGB")  # a truncated/corrupt file raises an error naming it
    check_aspect(img.height, img.width, f"ground-truth image {path}")
    img = img.resize(GT_RESIZE, Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def load_mask(path: Path, size: tuple[int, int] = EVAL_SIZE) -> torch.Tensor:
    """A DTU object mask as a bool (H, W) tensor at `size`: bicubic resize, then > 0.01 of full scale."""
    path = Path(path)
    img = load_image(path, "L")
    check_aspect(img.height, img.width, f"mask {path}")
    arr = np.asarray(img.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32) / 255.0
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


PSNR_MAX = 100.0  # dB: what identical images score (x264's convention), instead of inf


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    """-10 log10(MSE), capped at PSNR_MAX: identical images (MSE 0) score 100 dB instead of inf, which
    would make every mean over them inf. Differing images reach the cap only when MSE < 1e-10: at the
    protocol's 300x400, one or two 8-bit values one level off in an otherwise identical image. Real
    renders score tens of dB lower, so protocol numbers are unchanged. NaN (an empty mask) stays NaN."""
    return (-10.0 * torch.log10(mse)).clamp(max=PSNR_MAX)


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

_verified_files: dict[tuple[str, int, float], bool] = {}
_TRUNK_KEY = re.compile(r"net\.slice\d\.(\d+)\.(weight|bias)$")  # lpips' VGG slices keep torchvision's indices


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
        f"hub/checkpoints/{VGG16_FILE}. Random weights are never substituted. Without the file: "
        "`viewneti evaluate --lpips none` skips LPIPS (NaN column), `--lpips random` uses a random "
        "backbone for tests, labelled lpips_backbone='random' in every row; in the pipeline the same "
        "choices are `evaluation.lpips_weights: none|random`."
    )


def check_lpips_weights(backbone_weights: str) -> str:
    """Fail fast (MissingWeightsError) when LPIPS will need files that are absent or damaged: the
    `lpips` package's linear layers and, for "pretrained", the VGG16 file. Run before hours of work
    whose last step is the evaluation; every missing file is named in one error. Returns what will
    be used."""
    if backbone_weights == "none":
        return backbone_weights
    problems = []
    try:
        lpips_linear_weights_path()
    except MissingWeightsError as exc:
        problems.append(str(exc))
    path = vgg16_weights_path()
    if backbone_weights == "pretrained":
        try:
            _check_vgg_file(path)
        except MissingWeightsError as exc:
            problems.append(str(exc))
    if problems:
        raise MissingWeightsError("\n".join(problems))
    return str(path) if backbone_weights == "pretrained" else backbone_weights


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


class LPIPS(nn.Module):
    """The `lpips` package's own `LPIPS(net="vgg", version="0.1")`, behind our checks.

    backbone_weights:
      "pretrained": torchvision's ImageNet VGG16 from the torch hub cache (see `vgg16_weights_path`),
                    checked (name, sha256 prefix) before anything is built: a clear MissingWeightsError
                    if it is absent, never a download or a silent substitute.
      "random":     a seeded torchvision random init of the trunk, for tests only; `backbone_label`
                    says so and evaluation tables carry it in their `lpips_backbone` column.
    The package always builds with a random trunk (`pnet_rand=True`: torchvision would fetch the VGG
    file itself, unpickling it with `weights_only=False`); the checked file is then loaded here with
    `weights_only=True`. The linear layers are the ones shipped in the package. Inputs are
    (N, 3, H, W) in [-1, 1] on any device; the output is (N,).
    """

    def __init__(self, backbone_weights: str = "pretrained", seed: int = 0):
        super().__init__()
        if backbone_weights not in ("pretrained", "random"):
            raise ValueError(f"backbone_weights must be 'pretrained' or 'random', got {backbone_weights!r}")
        check_lpips_weights(backbone_weights)
        import lpips

        self.backbone_label = backbone_weights
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # torchvision's notes on the `pretrained=` argument lpips 0.1.4 still passes
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            torch.manual_seed(seed)
            self.net = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False,
                                   model_path=str(lpips_linear_weights_path()))
        if backbone_weights == "pretrained":
            self._load_backbone(vgg16_weights_path())
        self.requires_grad_(False)
        self.eval()

    def trunk_parameters(self) -> dict[str, torch.Tensor]:
        """The VGG16 conv parameters under torchvision's `features.{i}.{weight,bias}` names."""
        out = {}
        for key, value in self.net.state_dict().items():
            match = _TRUNK_KEY.match(key)
            if match:
                out[f"features.{match.group(1)}.{match.group(2)}"] = value
        return out

    def _load_backbone(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        trunk = {}
        for key in self.net.state_dict():
            match = _TRUNK_KEY.match(key)
            if match:
                name = f"features.{match.group(1)}.{match.group(2)}"
                if name not in state:
                    raise MissingWeightsError(_missing_vgg_message(path, f"it has no tensor {name}"))
                trunk[key] = state[name]
        missing, unexpected = self.net.load_state_dict(trunk, strict=False)
        assert not unexpected and not [k for k in missing if k.startswith("net.")], (missing, unexpected)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, y).flatten()


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
