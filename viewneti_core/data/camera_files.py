"""Bring-your-own captures: a folder of images plus a `cameras.json` that poses them.

The format is documented for users in `docs/cameras_json.md`; in short, `cameras.json` is

    {
      "images": [
        {"file": "img_000.png", "projection": [[...4], [...4], [...4]]},
        {"file": "img_001.png", "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                                "cam_to_world": [[...4], [...4], [...4], [0, 0, 0, 1]]},
        {"file": "img_002.png", "spherical": {"theta": 0.9, "phi": -1.57, "radius": 550.0}}
      ],
      "intrinsics": {"fx": 2892.3, "fy": 2892.3, "cx": 800, "cy": 600},   (optional default)
      "pose_convention": "opencv",                                         (optional; or "opengl")
      "normalization_cameras": [ {"projection": ...}, ... ],               (optional)
      "comment": "free text"                                               (optional)
    }

Each image entry uses exactly one form; forms may be mixed across entries. Every form is turned
into the camera representation the view mapper consumes (DESIGN 3.3): "dtu-12d" (a 3x4 projection
matrix P = K [R|t], world-to-camera R, t) or "spherical" (theta, phi, r of the camera centre, the
inverse of `cameras.spherical_to_center`). The normalisation ranges are taken over every listed
camera plus the optional extra `normalization_cameras` (e.g. the rest of a calibration set).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from viewneti_core.data.cameras import (
    CameraNormalization,
    camera_dim,
    decompose_projection,
    look_at_extrinsics,
    projection_matrix,
    spherical_to_center,
)
from viewneti_core.errors import ArtifactError
from viewneti_core.safe_io import MAX_JSON_BYTES, load_json_text, read_text_limited, short_repr

CAMERAS_JSON = "cameras.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
POSE_CONVENTIONS = ("opencv", "opengl")
TOP_LEVEL_KEYS = ("images", "intrinsics", "pose_convention", "normalization_cameras", "comment")
POSE_FORMS = ("projection", "cam_to_world", "spherical")
ENTRY_KEYS = ("file", "intrinsics", *POSE_FORMS)
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy")
SPHERICAL_KEYS = ("theta", "phi", "radius")
# OpenGL / NeRF / Blender cameras look down -z with y up; OpenCV cameras look down +z with y down.
_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
_ROTATION_TOL = 1e-3


class CameraFileError(ValueError):
    """A cameras.json (or its folder) that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class CameraFolder:
    """A posed capture: images in listing order, their raw camera vectors and the normalisation.

    cameras: (N, 3, 4) projection matrices for "dtu-12d", (N, 3) (theta, phi, r) for "spherical".
    normalization: per-number min/max over all listed cameras plus `normalization_cameras`.
    """

    root: Path
    image_paths: list[Path]
    cameras: np.ndarray
    normalization: CameraNormalization
    representation: str
    unlisted: tuple[str, ...] = ()  # image files in the folder that cameras.json does not mention

    def __len__(self) -> int:
        return len(self.image_paths)


# ---- conversions --------------------------------------------------------------------------------


def spherical_from_projection(matrix: np.ndarray) -> np.ndarray:
    """(theta, phi, r) of a 3x4 projection's camera centre: the inverse of `spherical_to_center`.

    theta: polar angle from +z in [0, pi]; phi: azimuth from +x towards +y in (-pi, pi];
    r: distance of the centre from the world origin (world units). Works for DTU cameras too.
    """
    _, _, center = decompose_projection(matrix)
    return spherical_from_center(center)


def spherical_from_center(center: np.ndarray) -> np.ndarray:
    """(theta, phi, r) of a point, with `spherical_to_center(theta, phi, r) == center`."""
    x, y, z = (float(v) for v in np.asarray(center, dtype=np.float64).reshape(3))
    radius = math.sqrt(x * x + y * y + z * z)
    if not radius > 0:
        raise ValueError("a camera centre at the world origin has no spherical angles")
    theta = math.acos(max(-1.0, min(1.0, z / radius)))
    phi = math.atan2(y, x)
    return np.array([theta, phi, radius])


def projection_from_pose(intrinsics: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """P = K [R|t] from intrinsics and an OpenCV camera-to-world pose (3x4 or 4x4)."""
    pose = np.asarray(cam_to_world, dtype=np.float64)
    rotation, center = pose[:3, :3], pose[:3, 3]
    world_to_camera = np.concatenate([rotation.T, (-rotation.T @ center)[:, None]], axis=1)
    return projection_matrix(np.asarray(intrinsics, dtype=np.float64), world_to_camera)


def projection_from_spherical(intrinsics: np.ndarray, theta: float, phi: float, radius: float) -> np.ndarray:
    """The camera at `spherical_to_center(theta, phi, radius)` looking at the world origin, world +z up."""
    center = spherical_to_center(theta, phi, radius)
    return projection_matrix(np.asarray(intrinsics, dtype=np.float64), look_at_extrinsics(center, np.zeros(3)))


def wrap_angle(phi: float) -> float:
    """An azimuth in (-pi, pi], the range `spherical_from_projection` returns."""
    wrapped = math.atan2(math.sin(phi), math.cos(phi))
    return math.pi if wrapped == -math.pi else wrapped


# ---- loading ------------------------------------------------------------------------------------


def load_camera_folder(folder: Path | str, representation: str = "dtu-12d", *,
                       unlisted: str = "warn") -> CameraFolder:
    """Read `folder/cameras.json` (or a cameras.json path given directly) and check it thoroughly.

    unlisted: what to do with image files in the folder that cameras.json does not list:
    "warn" (default: a UserWarning naming them; they are not used), "error" or "ignore".
    """
    camera_dim(representation)  # validates the representation name
    if unlisted not in ("warn", "error", "ignore"):
        raise ValueError(f"unlisted must be 'warn', 'error' or 'ignore', got {unlisted!r}")
    path = Path(folder)
    if path.is_dir():
        path = path / CAMERAS_JSON
    root = path.parent
    if not path.is_file():
        raise CameraFileError(
            f"{path} not found: a capture folder needs a {CAMERAS_JSON} that poses its images "
            "(see docs/cameras_json.md)"
        )
    try:  # size and nesting bounds (safe_io); the message names the file
        data = load_json_text(read_text_limited(path, MAX_JSON_BYTES, CAMERAS_JSON), str(path), CAMERAS_JSON)
    except ArtifactError as exc:
        raise CameraFileError(str(exc)) from None
    parser = _Parser(path, data, representation)
    entries = parser.images()

    image_paths = []
    seen: dict[str, int] = {}
    cameras = []
    for index, entry in enumerate(entries):
        where = parser.where("images", index, entry)
        rel = _relative_file(entry.get("file"), where)
        key = rel.as_posix()
        if key in seen:
            raise CameraFileError(f"{where}: {short_repr(key)} is already listed as images[{seen[key]}]; list each image once")
        seen[key] = index
        image_path = root / rel
        if not image_path.is_file():
            raise CameraFileError(f"{where}: image file {image_path} does not exist (paths are relative to {root})")
        image_paths.append(image_path)
        cameras.append(parser.camera(entry, where, with_file=True))
    extra = [parser.camera(entry, parser.where("normalization_cameras", i, entry), with_file=False)
             for i, entry in enumerate(parser.list_of("normalization_cameras", required=False))]

    stacked = np.stack(cameras)
    normalization = CameraNormalization.from_cameras(np.stack(cameras + extra), representation)

    listed = set(seen)
    stray = tuple(sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.relative_to(root).as_posix() not in listed
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ))
    if stray and unlisted != "ignore":
        names = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
        message = f"{path}: {len(stray)} image file(s) in {root} are not listed and will not be used: {names}"
        if unlisted == "error":
            raise CameraFileError(message + "; add them to 'images' or move them out of the folder")
        warnings.warn(message, UserWarning, stacklevel=2)
    return CameraFolder(root, image_paths, stacked, normalization, representation, stray)


def _relative_file(value: Any, where: str) -> PurePosixPath:
    if not isinstance(value, str) or not value.strip():
        raise CameraFileError(f"{where}: needs a 'file' with the image's path relative to the folder")
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise CameraFileError(f"{where}: 'file' must be a path inside the folder (relative, no '..'), got {short_repr(value)}")
    return rel


class _Parser:
    """Validates the JSON document and converts entries to the requested representation."""

    def __init__(self, path: Path, data: Any, representation: str) -> None:
        self.path, self.representation = path, representation
        if not isinstance(data, dict):
            raise CameraFileError(f"{path}: the top level must be an object with an 'images' list, "
                                  f"got {type(data).__name__}")
        unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise CameraFileError(f"{path}: unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
        self.data = data
        convention = data.get("pose_convention", "opencv")
        if convention not in POSE_CONVENTIONS:
            raise CameraFileError(f"{path}: 'pose_convention' must be one of {list(POSE_CONVENTIONS)}, "
                                  f"got {short_repr(convention)}")
        self.convention = convention
        self.default_intrinsics = (
            _intrinsics(data["intrinsics"], f"{path}: top-level 'intrinsics'") if "intrinsics" in data else None
        )

    def where(self, section: str, index: int, entry: Any) -> str:
        name = entry.get("file") if isinstance(entry, dict) else None
        return f"{self.path}: {section}[{index}]" + (f" ({short_repr(name)})" if isinstance(name, str) else "")

    def list_of(self, key: str, required: bool) -> list:
        if key not in self.data:
            if required:
                raise CameraFileError(f"{self.path}: missing the '{key}' list (one entry per image)")
            return []
        value = self.data[key]
        if not isinstance(value, list):
            raise CameraFileError(f"{self.path}: '{key}' must be a list of objects, got {type(value).__name__}")
        return value

    def images(self) -> list[dict]:
        entries = self.list_of("images", required=True)
        if not entries:
            raise CameraFileError(f"{self.path}: 'images' is empty; list at least one posed image")
        return entries

    def camera(self, entry: Any, where: str, with_file: bool) -> np.ndarray:
        """One entry -> (3, 4) projection ("dtu-12d") or (3,) spherical vector."""
        if not isinstance(entry, dict):
            raise CameraFileError(f"{where}: each entry must be an object, got {type(entry).__name__}")
        allowed = ENTRY_KEYS if with_file else tuple(k for k in ENTRY_KEYS if k != "file")
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            hint = " (normalization_cameras entries have no image file)" if "file" in unknown else ""
            raise CameraFileError(f"{where}: unknown key(s) {unknown}{hint}; allowed: {list(allowed)}")
        forms = [form for form in POSE_FORMS if form in entry]
        if len(forms) != 1:
            found = f"found {forms}" if forms else "found none"
            raise CameraFileError(
                f"{where}: needs exactly one camera form: 'projection' (3x4), 'intrinsics' + 'cam_to_world', "
                f"or 'spherical' {{theta, phi, radius}}; {found}"
            )
        form = forms[0]
        if form == "projection":
            if "intrinsics" in entry:
                raise CameraFileError(f"{where}: 'projection' already contains the intrinsics; drop 'intrinsics'")
            matrix = _matrix(entry["projection"], (3, 4), where, "projection")
            if abs(np.linalg.det(matrix[:, :3])) < 1e-12 * max(1.0, float(np.abs(matrix[:, :3]).max()) ** 3):
                raise CameraFileError(f"{where}: 'projection' has a singular left 3x3 block; not a camera")
            if self.representation == "spherical":
                return self._spherical_of(matrix, where)
            return matrix
        if form == "cam_to_world":
            intrinsics = self._intrinsics_for(entry, where, needed_for="'cam_to_world'")
            pose = self._pose(entry["cam_to_world"], where)
            if self.representation == "spherical":
                return self._spherical_of_center(pose[:3, 3], where)
            return projection_from_pose(intrinsics, pose)
        theta, phi, radius = _spherical(entry["spherical"], where)
        if self.representation == "spherical":
            if "intrinsics" in entry:
                _intrinsics(entry["intrinsics"], f"{where}: 'intrinsics'")  # still validated
            return np.array([theta, phi, radius])
        intrinsics = self._intrinsics_for(
            entry, where, needed_for="a 'spherical' camera in the dtu-12d representation (the 3x4 projection "
            "needs a focal length and principal point)")
        return projection_from_spherical(intrinsics, theta, phi, radius)

    def _intrinsics_for(self, entry: dict, where: str, needed_for: str) -> np.ndarray:
        if "intrinsics" in entry:
            return _intrinsics(entry["intrinsics"], f"{where}: 'intrinsics'")
        if self.default_intrinsics is not None:
            return self.default_intrinsics
        raise CameraFileError(f"{where}: 'intrinsics' are needed for {needed_for}; give them in the entry "
                              "or once at the top level")

    def _pose(self, value: Any, where: str) -> np.ndarray:
        shape = (4, 4) if isinstance(value, list) and len(value) == 4 else (3, 4)
        pose = _matrix(value, shape, where, "cam_to_world", other="or 4x4")
        if shape == (4, 4):
            if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
                raise CameraFileError(f"{where}: the last row of a 4x4 'cam_to_world' must be [0, 0, 0, 1], "
                                      f"got {pose[3].tolist()}")
        else:
            pose = np.concatenate([pose, [[0.0, 0.0, 0.0, 1.0]]])
        rotation = pose[:3, :3]
        if not np.allclose(rotation.T @ rotation, np.eye(3), atol=_ROTATION_TOL) or np.linalg.det(rotation) <= 0:
            raise CameraFileError(
                f"{where}: the 3x3 block of 'cam_to_world' must be a rotation (orthonormal, det +1); "
                f"det = {np.linalg.det(rotation):.4g}. Scale belongs in the intrinsics, and a mirrored axis "
                "usually means a different camera convention (see pose_convention)"
            )
        if self.convention == "opengl":
            pose = pose @ _OPENGL_TO_OPENCV
        return pose

    def _spherical_of(self, matrix: np.ndarray, where: str) -> np.ndarray:
        _, _, center = decompose_projection(matrix)
        return self._spherical_of_center(center, where)

    def _spherical_of_center(self, center: np.ndarray, where: str) -> np.ndarray:
        try:
            return spherical_from_center(center)
        except ValueError as exc:
            raise CameraFileError(f"{where}: {exc}; put the world origin at the object, not at a camera") from None


def _numbers(value: Any, where: str, what: str) -> np.ndarray:
    """A nested list of real numbers (no strings or booleans) as a float64 array; finite."""
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise CameraFileError(f"{where}: {what} must contain only numbers, found {short_repr(v)}")
        return float(v)

    def walk(v: Any) -> Any:
        return [walk(x) for x in v] if isinstance(v, list) else check(v)

    nested = walk(value)
    try:
        array = np.asarray(nested, dtype=np.float64)
    except ValueError:  # ragged rows
        raise CameraFileError(f"{where}: {what} has rows of different lengths") from None
    if not np.isfinite(array).all():
        raise CameraFileError(f"{where}: {what} contains non-finite numbers (NaN or Infinity)")
    return array


def _matrix(value: Any, shape: tuple[int, int], where: str, what: str, other: str = "") -> np.ndarray:
    if not isinstance(value, list):
        raise CameraFileError(f"{where}: '{what}' must be a {shape[0]}x{shape[1]}{' ' + other if other else ''} "
                              f"nested list of numbers, got {type(value).__name__}")
    array = _numbers(value, where, f"'{what}'")
    if array.size == shape[0] * shape[1] and array.ndim == 1:
        raise CameraFileError(f"{where}: '{what}' must be nested rows ({shape[0]} lists of {shape[1]}), "
                              f"not a flat list of {array.size} numbers")
    if array.shape != shape:
        raise CameraFileError(f"{where}: '{what}' must be {shape[0]}x{shape[1]}{' ' + other if other else ''}, "
                              f"got shape {array.shape}")
    return array


def _intrinsics(value: Any, where: str) -> np.ndarray:
    if isinstance(value, dict):
        keys = set(value)
        if keys != set(INTRINSICS_KEYS):
            raise CameraFileError(f"{where} as an object needs exactly the keys {list(INTRINSICS_KEYS)}, "
                                  f"got {sorted(keys)}")
        fx, fy, cx, cy = (float(_numbers(value[k], where, f"'{k}'")) for k in INTRINSICS_KEYS)
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    else:
        k = _matrix(value, (3, 3), where, "intrinsics", other="(or {fx, fy, cx, cy})")
        if not np.allclose(k[2], [0.0, 0.0, 1.0], atol=1e-9) or abs(k[1, 0]) > 1e-9:
            raise CameraFileError(f"{where}: an intrinsic matrix looks like [[fx, s, cx], [0, fy, cy], [0, 0, 1]]; "
                                  f"got {k.tolist()}")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise CameraFileError(f"{where}: focal lengths fx, fy must be positive (pixels), got {k[0, 0]}, {k[1, 1]}")
    return k


def _spherical(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, dict) or set(value) != set(SPHERICAL_KEYS):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise CameraFileError(f"{where}: 'spherical' must be an object with exactly {list(SPHERICAL_KEYS)} "
                              f"(radians, world units), got {got}")
    theta, phi, radius = (float(_numbers(value[k], where, f"spherical '{k}'")) for k in SPHERICAL_KEYS)
    if not 0.0 <= theta <= math.pi:
        raise CameraFileError(f"{where}: spherical theta is the polar angle from +z in radians, 0..pi; got {theta}"
                              + (" (degrees? convert with math.radians)" if theta <= 180.0 else ""))
    if abs(phi) > 2 * math.pi + 1e-9:
        raise CameraFileError(f"{where}: spherical phi is an azimuth in radians, -2pi..2pi; got {phi}"
                              " (degrees? convert with math.radians)")
    if not radius > 0:
        raise CameraFileError(f"{where}: spherical radius must be positive, got {radius}")
    return theta, wrap_angle(phi), radius
