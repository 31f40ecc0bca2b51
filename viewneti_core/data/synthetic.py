"""Synthetic DTU-format scenes: our default and test data, since real DTU cannot be downloaded here.

Each scan is a small 3D scene (textured, Lambertian-shaded spheres, boxes and cylinders on a table)
ray-cast from DTU-like cameras, so every view is geometrically consistent with its projection matrix
and view conditioning is learnable. The tree has exactly the DTU layout (see `dtu.py`); `--archive`
also writes zips shaped like the official releases so the preparation code can be tested end to end.

Everything is a pure function of (scans, size, seed, lights): same arguments, byte-identical files.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from viewneti_core.atomic_files import temp_dir_beside, temp_file_beside
from viewneti_core.data import dtu
from viewneti_core.data.cameras import (
    intrinsics_for_size,
    look_at_extrinsics,
    projection_matrix,
    spherical_to_center,
)

DEFAULT_SIZE = (160, 120)  # (width, height)
TARGET = np.array([0.0, 0.0, 35.0])  # the point all cameras look at (mm, world z up, table at z=0)
TABLE_RADIUS = 260.0  # mm; beyond it rays see the background
# Camera rows of the calibration set: (number of cameras, polar angle from +z in degrees,
# half azimuth span in degrees, distance to TARGET in mm). The first five rows are the 49 rendered
# views (7+9+10+11+12); the last two are the 15 extra positions that DTU's cal18 also holds.
CAMERA_ROWS = (
    (7, 38.0, 35.0, 580.0),
    (9, 48.0, 45.0, 560.0),
    (10, 57.0, 52.0, 540.0),
    (11, 66.0, 58.0, 550.0),
    (12, 74.0, 62.0, 570.0),
    (8, 30.0, 30.0, 600.0),
    (7, 80.0, 70.0, 560.0),
)
FRONT_AZIMUTH = -math.pi / 2  # cameras look from -y towards +y
AMBIENT = 0.18
_EPS = 1e-6
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Linear radiance -> 8-bit display value (gamma 2.2), as a lookup table: much faster than a power.
_GAMMA_LUT = np.round(np.linspace(0.0, 1.0, 4096) ** (1 / 2.2) * 255).astype(np.uint8)
_PNG_OPTIONS = {"compress_level": 1}  # fast; PIL adds no timestamps, so files are reproducible


# ---- cameras -----------------------------------------------------------------------------------


def synthetic_cameras(size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """The 64 calibration cameras (64, 3, 4): P = K[R|t] for images of `size` (width, height).

    Centres lie on a spherical cap a few hundred mm from the object, in serpentine rows like DTU's
    robot arm, all looking at TARGET; the same for every scan (DTU shares cal18 across scans).
    """
    width, height = size
    k = intrinsics_for_size(width, height)
    mats = []
    for row, (count, polar_deg, half_span_deg, radius) in enumerate(CAMERA_ROWS):
        azimuths = np.linspace(-half_span_deg, half_span_deg, count)
        if row % 2:
            azimuths = azimuths[::-1]
        for azimuth_deg in azimuths:
            center = TARGET + spherical_to_center(
                math.radians(polar_deg), FRONT_AZIMUTH + math.radians(azimuth_deg), radius
            )
            mats.append(projection_matrix(k, look_at_extrinsics(center, TARGET)))
    assert len(mats) == dtu.NUM_CAMERAS
    return np.stack(mats)


def camera_rays(matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and unit ray directions (H*W, 3) through the pixel centres (u+0.5, v+0.5)."""
    width, height = size
    m, p4 = matrix[:, :3], matrix[:, 3]
    center = -np.linalg.solve(m, p4)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    directions = np.linalg.solve(m, pixels.T).T  # M^-1 x, pointing forward since det(K R) > 0
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return center, directions


# ---- scene description -------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """One solid resting on (or stacked above) the table; `base` is the centre of its bottom face.

    size: sphere (radius,), box (half x, half y, height), cylinder (radius, height).
    The texture is solid (a function of the 3D point), so it is identical from every view.
    """

    kind: str  # "sphere" | "box" | "cylinder" | "table"
    base: np.ndarray
    size: np.ndarray
    angle: float  # rotation about z (boxes)
    colors: np.ndarray  # (2, 3) linear RGB in [0, 1]
    texture: str  # "checker" | "stripes" | "rings" | "plain" | "split"
    texture_scale: float  # mm
    texture_axis: np.ndarray  # unit vector for stripes

    @property
    def top(self) -> float:
        return float(self.base[2] + (2 * self.size[0] if self.kind == "sphere" else self.size[-1]))


@dataclass(frozen=True)
class Scene:
    table: Primitive
    objects: tuple[Primitive, ...]
    background: np.ndarray  # (2, 3): colour at the horizon and straight up


def synthetic_scene(seed: int, scan: int) -> Scene:
    """A different scene for every (seed, scan): 3-5 primitives on a textured table."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, scan]))

    def colors(muted: bool = False) -> np.ndarray:
        base = rng.uniform(0.35, 0.7, 3) if muted else _saturated_color(rng)
        second = np.clip(base * rng.uniform(0.35, 0.6) + (0.25 if muted else 0.0), 0, 1)
        return np.stack([base, second])

    def texture() -> tuple[str, float, np.ndarray]:
        axis = rng.normal(size=3)
        return (
            str(rng.choice(["checker", "stripes", "rings", "plain"])),
            float(rng.uniform(8.0, 22.0)),
            axis / np.linalg.norm(axis),
        )

    table = Primitive("table", np.zeros(3), np.array([TABLE_RADIUS]), 0.0, colors(muted=True), "checker",
                      float(rng.uniform(25.0, 45.0)), np.array([1.0, 0.0, 0.0]))
    objects: list[Primitive] = []
    footprints: list[tuple[float, float, float]] = []
    n_objects = int(rng.integers(3, 6))
    for _ in range(200):  # rejection sampling of non-overlapping footprints
        if len(footprints) == n_objects:
            break
        radius = float(rng.uniform(25.0, 48.0))
        distance, azimuth = float(rng.uniform(0.0, 90.0)), float(rng.uniform(0, 2 * math.pi))
        x, y = distance * math.cos(azimuth), distance * math.sin(azimuth)
        if any(math.hypot(x - fx, y - fy) < radius + fr + 4.0 for fx, fy, fr in footprints):
            continue
        footprints.append((x, y, radius))
        kind = str(rng.choice(["sphere", "box", "cylinder"]))
        base = np.array([x, y, 0.0])
        if kind == "sphere":
            size = np.array([radius])
        elif kind == "box":
            half = radius / math.sqrt(2)
            size = np.array([half * rng.uniform(0.6, 1.0), half * rng.uniform(0.6, 1.0), rng.uniform(35.0, 130.0)])
        else:
            size = np.array([radius * rng.uniform(0.6, 1.0), rng.uniform(40.0, 140.0)])
        obj = Primitive(kind, base, size, float(rng.uniform(0, math.pi)), colors(), *texture())
        objects.append(obj)
        if kind != "sphere" and rng.uniform() < 0.4:  # a ball resting on top of a box or cylinder
            ball = min(float(size[0]), float(size[1]) if kind == "box" else float(size[0])) * 0.9
            objects.append(Primitive("sphere", np.array([x, y, obj.top]), np.array([ball]), 0.0, colors(),
                                     *texture()))
    background = np.array([rng.uniform(0.02, 0.08, 3), rng.uniform(0.10, 0.22, 3)])
    return Scene(table, tuple(objects), background)


def _saturated_color(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    channels = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return 0.15 + 0.8 * channels * rng.uniform(0.7, 1.0)


def light_setup(light: int) -> tuple[np.ndarray, float, np.ndarray]:
    """(unit direction towards the light, intensity, RGB tint) of DTU light index 0..6.

    The light circles the scene with the index, at varying height and strength, like DTU's 7
    LED positions; light 3 is the brightest, most frontal one (the protocol's default).
    """
    azimuth = FRONT_AZIMUTH + math.radians(-75.0 + 25.0 * light)
    elevation = math.radians((35.0, 50.0, 65.0, 60.0, 65.0, 50.0, 35.0)[light])
    direction = np.array([
        math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)
    ])
    intensity = (0.55, 0.70, 0.85, 1.00, 0.85, 0.70, 0.55)[light]
    tint = np.array([1.0, 1.0 - 0.03 * abs(light - 3), 1.0 - 0.06 * abs(light - 3)])
    return direction, intensity, tint


# ---- ray casting -------------------------------------------------------------------------------


def _intersect(prim: Primitive, origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance (N,) (inf where missed) and outward unit normal (N, 3) at the hit."""
    n = len(d)
    t = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        if prim.kind == "table":
            tt = -origin[2] / d[:, 2]
            xy = origin[:2] + tt[:, None] * d[:, :2]
            ok = (d[:, 2] < 0) & (np.einsum("ij,ij->i", xy, xy) <= prim.size[0] ** 2)
            t[ok] = tt[ok]
            normal[:, 2] = 1.0
        elif prim.kind == "sphere":
            center = prim.base + np.array([0.0, 0.0, prim.size[0]])
            oc = origin - center
            b = d @ oc
            disc = b * b - (oc @ oc - prim.size[0] ** 2)
            tt = -b - np.sqrt(disc)
            ok = (disc >= 0) & (tt > _EPS)
            t[ok] = tt[ok]
            normal = (origin + np.where(ok, tt, 0.0)[:, None] * d - center) / prim.size[0]
        elif prim.kind == "box":
            half = np.array([prim.size[0], prim.size[1], prim.size[2] / 2])
            rot = _rot_z(-prim.angle)
            o_local = rot @ (origin - prim.base - np.array([0.0, 0.0, half[2]]))
            d_local = d @ rot.T
            d_safe = np.where(np.abs(d_local) < 1e-12, 1e-12, d_local)
            t1, t2 = (-half - o_local) / d_safe, (half - o_local) / d_safe
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near, t_far = near.max(axis=1), far.min(axis=1)
            ok = (t_near <= t_far) & (t_near > _EPS)
            t[ok] = t_near[ok]
            axis = near.argmax(axis=1)  # the slab entered last is the face hit
            n_local = np.zeros((n, 3))
            n_local[np.arange(n), axis] = -np.sign(d_local[np.arange(n), axis])
            normal = n_local @ rot  # back to world: rot.T @ n for each row
        elif prim.kind == "cylinder":
            radius, height = prim.size
            oxy = origin[:2] - prim.base[:2]
            a = np.einsum("ij,ij->i", d[:, :2], d[:, :2])
            b = d[:, :2] @ oxy
            disc = b * b - a * (oxy @ oxy - radius**2)
            side = (-b - np.sqrt(disc)) / a
            z_side = origin[2] + side * d[:, 2]
            side_ok = (disc >= 0) & (side > _EPS) & (z_side >= 0) & (z_side <= height)
            cap = (height - origin[2]) / d[:, 2]
            cap_xy = oxy + cap[:, None] * d[:, :2]
            cap_ok = (d[:, 2] < 0) & (cap > _EPS) & (np.einsum("ij,ij->i", cap_xy, cap_xy) <= radius**2)
            t = np.minimum(np.where(side_ok, side, np.inf), np.where(cap_ok, cap, np.inf))
            use_cap = cap_ok & (~side_ok | (cap <= side))
            radial = (oxy + np.where(side_ok, side, 0.0)[:, None] * d[:, :2]) / radius
            normal[:, :2] = radial
            normal[use_cap] = (0.0, 0.0, 1.0)
        else:
            raise ValueError(f"unknown primitive kind {prim.kind!r}")
    return t, normal


def _albedo(prim: Primitive, points: np.ndarray) -> np.ndarray:
    """Solid texture colour (M, 3) at world points on the primitive."""
    # The quarter-cell phase keeps flat faces (the table at z=0) off checker cell boundaries.
    q = (points - prim.base) / prim.texture_scale + 0.25
    if prim.texture == "checker":
        pattern = (np.floor(q).sum(axis=1) % 2).astype(np.float64)
    elif prim.texture == "stripes":
        pattern = (np.sin(2 * math.pi * (q @ prim.texture_axis)) > 0).astype(np.float64)
    elif prim.texture == "split":  # two-tone: colours[1] on the side `texture_axis` points to
        pattern = ((points - prim.base) @ prim.texture_axis > 0).astype(np.float64)
    elif prim.texture == "rings":
        pattern = (np.sin(2 * math.pi * np.linalg.norm(q[:, :2], axis=1)) > 0).astype(np.float64)
    else:  # plain, with a gentle smooth variation
        pattern = 0.25 + 0.25 * np.sin(2 * math.pi * (q @ prim.texture_axis) / 3)
    return prim.colors[0] * (1 - pattern[:, None]) + prim.colors[1] * pattern[:, None]


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class ViewRender:
    """One view: an image per light (H, W, 3) uint8, the object mask (H, W) bool, depth and hit points."""

    images: dict[int, np.ndarray]
    mask: np.ndarray
    depth: np.ndarray  # (H, W) distance along the ray (inf for background)
    points: np.ndarray  # (H, W, 3) world hit points (undefined where depth is inf)


def render_view(scene: Scene, matrix: np.ndarray, size: tuple[int, int], lights: Iterable[int]) -> ViewRender:
    """Ray-cast the scene once for camera `matrix`, then shade it once per light."""
    width, height = size
    origin, d = camera_rays(matrix, size)
    prims = (scene.table, *scene.objects)
    hits = [_intersect(p, origin, d) for p in prims]
    ts = np.stack([h[0] for h in hits])
    winner = ts.argmin(axis=0)
    depth = ts[winner, np.arange(len(d))]
    hit = np.isfinite(depth)
    normals = np.stack([h[1] for h in hits])[winner, np.arange(len(d))]
    points = origin + np.where(hit, depth, 0.0)[:, None] * d

    albedo = np.zeros((len(d), 3))
    for index, prim in enumerate(prims):
        sel = hit & (winner == index)
        if sel.any():
            albedo[sel] = _albedo(prim, points[sel])
    up = np.clip(d[:, 2:3], 0.0, 1.0)  # background: vertical gradient, independent of the light
    background = scene.background[0] * (1 - up) + scene.background[1] * up

    images = {}
    for light in lights:
        direction, intensity, tint = light_setup(light)
        lambert = np.clip(normals @ direction, 0.0, None)[:, None]
        radiance = albedo * (AMBIENT + intensity * lambert) * tint
        linear = np.where(hit[:, None], radiance, background)
        levels = np.round(np.clip(linear, 0.0, 1.0) * (len(_GAMMA_LUT) - 1)).astype(np.int64)
        images[light] = _GAMMA_LUT[levels].reshape(height, width, 3)
    mask = (hit & (winner > 0)).reshape(height, width)
    return ViewRender(images, mask, depth.reshape(height, width), points.reshape(height, width, 3))


# ---- writing the tree --------------------------------------------------------------------------


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if width * 3 != height * 4:
        raise ValueError(f"image size must have DTU's 4:3 aspect (e.g. 160x120, 512x384), got {width}x{height}")
    return width, height


def check_scans(scans: Iterable[int]) -> list[int]:
    scans = sorted(set(int(s) for s in scans))
    if not scans:
        raise ValueError("at least one scan number is needed")
    bad = [s for s in scans if not 1 <= s <= 128]
    if bad:
        raise ValueError(f"DTU scan numbers are 1..128, got {bad}")
    return scans


def make_synthetic_dtu(
    out_dir: Path | str,
    scans: Sequence[int],
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    lights: Iterable[int] = range(dtu.NUM_LIGHTS),
    progress: bool = True,
    overwrite: bool = False,
    archive: bool = False,
    scene_of: Callable[[int, int], Scene] | None = None,
) -> Path:
    """Write a synthetic DTU tree (images, calibration, masks for test scans) to `out_dir`.

    `scene_of(seed, scan)` gives each scan's scene: `synthetic_scene` by default; the mini world
    passes its own (`mini_world.world.scene`).

    The tree is built in a temp directory next to `out_dir` and renamed into place at the end, so
    a crash never leaves a half-written tree that looks complete. With `archive`, zips shaped like
    the official releases are written to `out_dir/archives/` as well (see `write_archives`).
    """
    out_dir = Path(out_dir)
    scans = check_scans(scans)
    size = check_size(size)
    lights = sorted(set(int(light) for light in lights))
    if not lights or any(not 0 <= light < dtu.NUM_LIGHTS for light in lights):
        raise ValueError(f"lights must be a non-empty subset of 0..{dtu.NUM_LIGHTS - 1}, got {lights}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose another --out or pass --overwrite to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out_dir)
    try:
        cameras = synthetic_cameras(size)
        for cam, matrix in enumerate(cameras):
            path = tmp / dtu.camera_relpath(cam)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dtu.format_projection_matrix(matrix))
        bar = tqdm(total=len(scans) * dtu.NUM_VIEWS, unit="view", disable=not progress, desc="synthetic DTU")
        for scan in scans:
            bar.set_postfix_str(f"scan{scan}")
            _write_scan(tmp, scan, (scene_of or synthetic_scene)(seed, scan), cameras, size, lights, bar)
        bar.close()
        if archive:
            write_archives(tmp, tmp / "archives")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_scan(root: Path, scan: int, scene: Scene, cameras: np.ndarray, size: tuple[int, int],
                lights: list[int], bar: tqdm) -> None:
    with_masks = scan in dtu.TEST_SCANS
    (root / dtu.image_relpath(scan, 0)).parent.mkdir(parents=True, exist_ok=True)
    if with_masks:
        (root / dtu.mask_relpath(scan, 0)).parent.mkdir(parents=True, exist_ok=True)
    for cam in range(dtu.NUM_VIEWS):
        view = render_view(scene, cameras[cam], size, lights)
        for light, image in view.images.items():
            Image.fromarray(image).save(root / dtu.image_relpath(scan, cam, light), **_PNG_OPTIONS)
        brightest = np.max(np.stack(list(view.images.values())), axis=0)
        Image.fromarray(brightest).save(root / max_image_relpath(scan, cam), **_PNG_OPTIONS)
        if with_masks:
            mask = Image.fromarray(view.mask.astype(np.uint8) * 255, mode="L")
            mask.save(root / dtu.mask_relpath(scan, cam), **_PNG_OPTIONS)
        bar.update(1)


def max_image_relpath(scan: int, cam: int) -> str:
    """`Rectified/scan{N}/rect_{cam+1:03d}_max.png`: in the release, ignored by every reader."""
    return f"Rectified/scan{scan}/rect_{cam + 1:03d}_max.png"


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temp tree into place (replacing an existing tree only after success)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- archives shaped like the official releases -------------------------------------------------


def write_archives(tree_dir: Path | str, out_dir: Path | str) -> dict[str, Path]:
    """Zip a synthetic tree like the official releases: {"Rectified", "SampleSet", "idrmasks"} -> path.

    Rectified.zip: `Rectified/scan{N}/rect_*.png` (with the `_max.png` files); SampleSet.zip: the
    64 cameras under `SampleSet/MVS Data/Calibration/cal18/` plus unrelated filler; idrmasks.zip:
    `submission_data/idrmasks/scan{N}/mask/{cam:03d}.png` for the 1st, 3rd, ... masked scan and
    `.../scan{N}/{cam:03d}.png` for the others, so both layouts of the RegNeRF release appear.
    Member order and timestamps are fixed, so the zips are byte-identical across runs.
    """
    tree_dir, out_dir = Path(tree_dir), Path(out_dir)
    rect_dirs = sorted((tree_dir / "Rectified").glob("scan*"), key=lambda p: int(p.name[4:]))
    if not rect_dirs:
        raise FileNotFoundError(f"{tree_dir} has no Rectified/scan*/ folders to archive")
    scans = [int(p.name[4:]) for p in rect_dirs]

    rectified = {f"Rectified/{p.parent.name}/{p.name}": p for d in rect_dirs for p in sorted(d.glob("rect_*.png"))}
    sampleset: dict[str, Path | bytes] = {
        f"{dtu.SAMPLESET_CALIBRATION_DIR}/pos_{cam + 1:03d}.txt": tree_dir / dtu.camera_relpath(cam)
        for cam in range(dtu.NUM_CAMERAS)
    }
    sampleset["SampleSet/MVS Data/Points/stl/stl001_total.ply"] = (
        b"ply\nformat ascii 1.0\ncomment synthetic filler, not a DTU point cloud\nelement vertex 0\nend_header\n"
    )
    sampleset["SampleSet/MVS Data/ObsMask/ObsMask1_10.mat"] = b"synthetic filler\n"
    masks: dict[str, Path | bytes] = {}
    masked_scans = [s for s in scans if (tree_dir / dtu.mask_relpath(s, 0)).is_file()]
    for i, scan in enumerate(masked_scans):
        folder = f"submission_data/idrmasks/scan{scan}/" + ("mask/" if i % 2 == 0 else "")
        for cam in range(dtu.NUM_VIEWS):
            path = tree_dir / dtu.mask_relpath(scan, cam)
            if path.is_file():
                masks[f"{folder}{cam:03d}.png"] = path

    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "Rectified": _write_zip(out_dir / "Rectified.zip", rectified),
        "SampleSet": _write_zip(out_dir / "SampleSet.zip", sampleset),
        "idrmasks": _write_zip(out_dir / "idrmasks.zip", masks),
    }


def _write_zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    """Deterministic zip (sorted members, parent folder entries, fixed timestamps), written atomically."""
    names = sorted(members)
    folders = sorted({"/".join(name.split("/")[:i]) + "/" for name in names for i in range(1, name.count("/") + 1)})
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for folder in folders:
                info = zipfile.ZipInfo(folder, date_time=_ZIP_DATE)
                info.create_system = 3
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            for name in names:
                source = members[name]
                data = source if isinstance(source, bytes) else source.read_bytes()
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.create_system = 3
                info.external_attr = 0o644 << 16
                # PNGs are already compressed: store them, as the real releases effectively do.
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- CLI glue ----------------------------------------------------------------------------------


def parse_scan_list(text: str) -> list[int]:
    """'8,21,65' -> [8, 21, 65] (validated to 1..128)."""
    try:
        values = [int(tok) for tok in text.replace(" ", "").split(",") if tok]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scans takes comma-separated scan numbers like 8,21,65, got {text!r}") from None
    try:
        return check_scans(values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_size(text: str) -> tuple[int, int]:
    """'160x120' -> (160, 120), positive and 4:3."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes WIDTHxHEIGHT like 160x120, got {text!r}") from None
    try:
        return check_size((width, height))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_make_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output DTU tree (must not exist or be empty)")
    parser.add_argument("--scans", type=parse_scan_list, required=True,
                        help="comma-separated DTU scan numbers, e.g. 8,21,65 (test scans also get masks)")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="image size WIDTHxHEIGHT with a 4:3 aspect (default 160x120)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--archive", action="store_true",
                        help="also write Rectified.zip, SampleSet.zip and idrmasks.zip to OUT/archives/")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run_make_synthetic(args: argparse.Namespace) -> int:
    out = make_synthetic_dtu(args.out, args.scans, size=args.size, seed=args.seed, progress=args.progress,
                             overwrite=args.overwrite, archive=args.archive)
    width, height = args.size
    masked = [s for s in args.scans if s in dtu.TEST_SCANS]
    print(f"wrote synthetic DTU scans {args.scans} ({width}x{height}, seed {args.seed}) to {out}")
    print(f"  images:  {len(args.scans)} x {dtu.NUM_VIEWS} views x {dtu.NUM_LIGHTS} lights (+ _max) under {out / 'Rectified'}")
    print(f"  cameras: {dtu.NUM_CAMERAS} files under {out / 'Calibration/cal18'}")
    print(f"  masks:   {masked if masked else 'none (no test scans requested)'}" + (f" under {out / 'masks'}" if masked else ""))
    if args.archive:
        for name in ("Rectified", "SampleSet", "idrmasks"):
            print(f"  archive: {out / 'archives' / (name + '.zip')}")
    return 0
