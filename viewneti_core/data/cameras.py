"""Camera representations fed to the view mapper, and their normalisation (DESIGN 3.3).

The view mapper never sees raw camera numbers: each number is rescaled to [-1, 1] with a min/max
taken over *all* cameras of the calibration set (all 64 DTU cameras), so a pretrained mapper keeps
the same normalisation on new scenes. The ranges are stored with the mapper weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

CameraRepresentation = Literal["dtu-12d", "spherical"]

CAMERA_DIMS: dict[str, int] = {"dtu-12d": 12, "spherical": 3}


def camera_dim(representation: str) -> int:
    try:
        return CAMERA_DIMS[representation]
    except KeyError:
        raise ValueError(
            f"unknown camera representation {representation!r}; expected one of {sorted(CAMERA_DIMS)}"
        ) from None


def camera_vector(camera: np.ndarray | torch.Tensor, representation: str) -> torch.Tensor:
    """Flatten one camera into the raw vector of its representation (float32).

    dtu-12d: a 3x4 projection matrix flattened row-major; spherical: (theta, phi, r).
    """
    dim = camera_dim(representation)
    tensor = torch.as_tensor(np.asarray(camera) if not torch.is_tensor(camera) else camera)
    tensor = tensor.to(torch.float32).reshape(-1)
    if tensor.numel() != dim:
        raise ValueError(
            f"a {representation} camera needs {dim} numbers"
            + (" (a 3x4 projection matrix)" if representation == "dtu-12d" else " (theta, phi, r)")
            + f", got {tensor.numel()}"
        )
    return tensor


def check_camera_batch(cameras: torch.Tensor, dim: int, what: str = "cameras") -> torch.Tensor:
    """Validate a (N, dim) batch of raw camera vectors, accepting (N, 3, 4) for 12-d cameras."""
    if not torch.is_tensor(cameras):
        cameras = torch.as_tensor(np.asarray(cameras))
    if cameras.ndim == 3 and cameras.shape[1:] == (3, 4) and dim == 12:
        cameras = cameras.reshape(cameras.shape[0], 12)
    if cameras.ndim == 1 and cameras.shape[0] == dim:
        cameras = cameras[None]
    if cameras.ndim != 2 or cameras.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}), got {tuple(cameras.shape)}")
    if not torch.isfinite(cameras).all():
        bad = (~torch.isfinite(cameras)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{what} contain non-finite values (rows {bad})")
    return cameras


@dataclass(frozen=True)
class CameraNormalization:
    """Per-element min/max of camera vectors, mapping each number to [-1, 1]."""

    representation: str
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    @classmethod
    def from_cameras(cls, cameras: np.ndarray | torch.Tensor, representation: str) -> CameraNormalization:
        """Ranges over every camera of a calibration set (e.g. all 64 DTU cameras)."""
        dim = camera_dim(representation)
        vectors = check_camera_batch(torch.as_tensor(np.asarray(cameras), dtype=torch.float64), dim)
        return cls(
            representation=representation,
            minimum=tuple(float(v) for v in vectors.min(dim=0).values),
            maximum=tuple(float(v) for v in vectors.max(dim=0).values),
        )

    def __post_init__(self) -> None:
        dim = camera_dim(self.representation)
        if len(self.minimum) != dim or len(self.maximum) != dim:
            raise ValueError(f"camera normalisation for {self.representation} needs {dim} min and max values")
        if not all(math.isfinite(v) for v in (*self.minimum, *self.maximum)):
            raise ValueError("camera normalisation ranges must be finite")

    @property
    def dim(self) -> int:
        return len(self.minimum)

    @property
    def has_range(self) -> bool:
        """False when every camera number is constant (one camera, or copies of one): every camera
        would then normalise to the zero vector and a view mapper trained on it could not tell views apart."""
        return any(hi > lo for lo, hi in zip(self.minimum, self.maximum, strict=True))

    def to_dict(self) -> dict:
        return {"representation": self.representation, "min": list(self.minimum), "max": list(self.maximum)}

    @classmethod
    def from_dict(cls, data: dict) -> CameraNormalization:
        return cls(data["representation"], tuple(data["min"]), tuple(data["max"]))


def normalize_cameras(cameras: torch.Tensor, minimum: torch.Tensor, maximum: torch.Tensor) -> torch.Tensor:
    """Rescale each camera number to [-1, 1]; constant elements (max == min) map to 0."""
    span = maximum - minimum
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    scaled = (cameras - minimum) / safe_span * 2 - 1
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


# ---- geometry helpers (synthetic scenes, camera paths, demos) ----------------------------------


def intrinsics_for_size(width: int, height: int, focal_at_1600: float = 2892.33) -> np.ndarray:
    """A DTU-like intrinsic matrix (DTU's 1600x1200 focal length) scaled to `width` x `height`."""
    scale = width / 1600.0
    return np.array(
        [[focal_at_1600 * scale, 0.0, width / 2.0], [0.0, focal_at_1600 * scale, height / 2.0], [0.0, 0.0, 1.0]]
    )


def look_at_extrinsics(center: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """World-to-camera [R|t] (OpenCV convention: x right, y down, z forward) looking at `target`."""
    center = np.asarray(center, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - center
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight along `up`
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.concatenate([rotation, (-rotation @ center)[:, None]], axis=1)


def projection_matrix(intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """P = K [R|t], the form stored in DTU's `pos_XXX.txt` files."""
    return np.asarray(intrinsics) @ np.asarray(extrinsics)


def spherical_to_center(theta: float, phi: float, radius: float) -> np.ndarray:
    """Camera centre from polar angle theta (from +z), azimuth phi and radius, in world units."""
    return radius * np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])


def decompose_projection(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split P into (K, R, camera centre) with an RQ decomposition; K has a positive diagonal."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    m = matrix[:, :3]
    # RQ decomposition via QR of the row-reversed transpose.
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ m).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    signs = np.diag(np.sign(np.diag(k)))
    k, rot = k @ signs, signs @ rot
    if np.linalg.det(rot) < 0:
        rot = -rot
        k = -k
    center = -np.linalg.solve(m, matrix[:, 3])
    return k / k[2, 2], rot, center


def interpolate_cameras(p0: np.ndarray, p1: np.ndarray, n: int) -> np.ndarray:
    """`n` projection matrices on a smooth path from P0 to P1 (slerp rotation, lerp centre and K)."""
    k0, r0, c0 = decompose_projection(p0)
    k1, r1, c1 = decompose_projection(p1)
    q0, q1 = _rotation_to_quaternion(r0), _rotation_to_quaternion(r1)
    if np.dot(q0, q1) < 0:
        q1 = -q1
    out = []
    for w in np.linspace(0.0, 1.0, n):
        q = _slerp(q0, q1, w)
        rot = _quaternion_to_rotation(q)
        center = (1 - w) * c0 + w * c1
        k = (1 - w) * k0 + w * k1
        out.append(k @ np.concatenate([rot, (-rot @ center)[:, None]], axis=1))
    return np.stack(out)


def _rotation_to_quaternion(r: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def _quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    dot = float(np.clip(np.dot(q0, q1), -1.0, 1.0))
    if dot > 0.9995:
        q = (1 - w) * q0 + w * q1
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - w) * theta) * q0 + math.sin(w * theta) * q1) / math.sin(theta)
