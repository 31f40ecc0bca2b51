"""Synthetic DTU-format scenes (viewneti_core/data/synthetic.py): layout, cameras, geometry, determinism, CLI.

Most checks read the files back through the same readers the rest of the code uses (`dtu.py`), so
they test what a user of the tree sees, not the generator's internals.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures.data import SYNTHETIC_SCANS, SYNTHETIC_SIZE
from PIL import Image

from viewneti_cli import viewneti as cli
from viewneti_core.data import dtu, synthetic
from viewneti_core.data.cameras import decompose_projection
from viewneti_core.data.synthetic import (
    TARGET,
    make_synthetic_dtu,
    max_image_relpath,
    synthetic_cameras,
    synthetic_scene,
    write_archives,
)

DTU_FOCAL_1600 = 2892.33  # px at 1600x1200 (the DTU-like value the generator scales)
REPO = Path(__file__).resolve().parents[1]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _mask(root: Path, scan: int, cam: int) -> np.ndarray:
    path = dtu.find_mask(root, scan, cam)
    assert path is not None, f"no mask for scan {scan} cam {cam}"
    with Image.open(path) as image:
        assert image.mode == "L"
        values = np.asarray(image)
    assert set(np.unique(values)) <= {0, 255}
    return values > 127


def _project(matrix: np.ndarray, point: np.ndarray) -> tuple[float, float]:
    x = matrix @ np.append(point, 1.0)
    assert x[2] > 0, "point behind the camera"
    return x[0] / x[2], x[1] / x[2]


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hires_root(tmp_path_factory) -> Path:
    """Scan 21 at 160x120 under light 3 only: enough pixels per checker cell for geometry checks."""
    return make_synthetic_dtu(tmp_path_factory.mktemp("hires") / "dtu", [21], size=(160, 120), seed=0,
                              lights=[3], progress=False)


# ---- layout -------------------------------------------------------------------------------------


def test_exact_dtu_layout(synthetic_dtu_root):
    root = Path(synthetic_dtu_root)
    assert sorted(p.name for p in root.iterdir()) == ["Calibration", "Rectified", "masks"]
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temp dirs left next to it
    for scan in SYNTHETIC_SCANS:
        files = {p.name for p in (root / f"Rectified/scan{scan}").iterdir()}
        expected = {Path(dtu.image_relpath(scan, cam, light)).name
                    for cam in range(dtu.NUM_VIEWS) for light in range(dtu.NUM_LIGHTS)}
        expected |= {Path(max_image_relpath(scan, cam)).name for cam in range(dtu.NUM_VIEWS)}
        assert files == expected
        assert len(files) == 49 * 7 + 49
    with Image.open(root / dtu.image_relpath(21, 48, 6)) as image:
        assert image.size == SYNTHETIC_SIZE and image.mode == "RGB"

    assert sorted(p.name for p in (root / "Calibration/cal18").iterdir()) == [
        f"pos_{i:03d}.txt" for i in range(1, 65)]
    cameras = dtu.load_cameras(root)
    assert cameras.shape == (64, 3, 4)
    np.testing.assert_allclose(cameras, synthetic_cameras(SYNTHETIC_SIZE), atol=1e-6)


def test_masks_only_for_test_scans(synthetic_dtu_root):
    root = Path(synthetic_dtu_root)
    masked = sorted(int(p.name[4:]) for p in (root / "masks").iterdir())
    assert masked == [s for s in SYNTHETIC_SCANS if s in dtu.TEST_SCANS] == [21, 114]
    for scan in masked:
        assert sorted(p.name for p in (root / f"masks/scan{scan}").iterdir()) == [f"{c:03d}.png" for c in range(49)]
        fractions = [_mask(root, scan, cam).mean() for cam in range(dtu.NUM_VIEWS)]
        assert 0.02 < min(fractions) and max(fractions) < 0.8  # objects visible, plenty of background
        with Image.open(dtu.find_mask(root, scan, 0)) as image:
            assert image.size == SYNTHETIC_SIZE
    assert all(dtu.find_mask(root, 2, cam) is None for cam in range(dtu.NUM_VIEWS))


def test_max_files_are_ignored_by_readers(synthetic_dtu_root, tmp_path):
    root = Path(synthetic_dtu_root)
    names = [p.relative_to(root).as_posix() for p in (root / "Rectified/scan2").iterdir()]
    parsed = {name: dtu.parse_rectified_member(name) for name in names}
    assert all(value is None for name, value in parsed.items() if name.endswith("_max.png"))
    assert {v for v in parsed.values() if v is not None} == {(2, c, light) for c in range(49) for light in range(7)}
    # The release's _max image is the brightest exposure; ours is the per-pixel max over the lights.
    stack = np.stack([_rgb(root / dtu.image_relpath(2, 10, light)) for light in range(7)])
    np.testing.assert_array_equal(_rgb(root / max_image_relpath(2, 10)), stack.max(axis=0))

    # The preparation step reads the tree like a release and copies no _max file.
    from viewneti_core.data.prepare import prepare_dtu

    out = tmp_path / "prepared"
    prepare_dtu([str(root)], [21], out, progress=False)
    copied = [p.name for p in (out / "Rectified/scan21").iterdir()]
    assert len(copied) == 49 and not any("_max" in name for name in copied)


# ---- cameras ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1600, 1200), (160, 120), (64, 48)])
def test_intrinsics_are_dtu_focal_scaled_to_the_size(size):
    width, height = size
    for matrix in synthetic_cameras(size):
        k, rotation, _ = decompose_projection(matrix)
        focal = DTU_FOCAL_1600 * width / 1600
        np.testing.assert_allclose([k[0, 0], k[1, 1]], [focal, focal], rtol=1e-9)
        np.testing.assert_allclose(k[:2, 2], [width / 2, height / 2], atol=1e-9 * width)
        assert abs(k[0, 1]) < 1e-9 * focal and k[2, 2] == 1.0
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.norm(matrix[2, :3]) == pytest.approx(1.0)  # like DTU: K[2] = (0, 0, 1), unit rows


def test_cameras_scale_with_the_image_like_dtu():
    full, small = synthetic_cameras((1600, 1200)), synthetic_cameras((160, 120))
    np.testing.assert_allclose(np.diag([0.1, 0.1, 1.0]) @ full, small, rtol=1e-12, atol=1e-9)


def test_camera_centres_on_a_cap_around_the_object_with_dtu_magnitudes():
    cameras = synthetic_cameras((1600, 1200))
    centres, axes = [], []
    for matrix in cameras:
        _, rotation, center = decompose_projection(matrix)
        centres.append(center)
        axes.append(rotation[2])
        # The optical axis points at the object and the object lands in the middle of the image.
        to_target = (TARGET - center) / np.linalg.norm(TARGET - center)
        assert math.degrees(math.acos(min(1.0, float(rotation[2] @ to_target)))) < 0.5
        np.testing.assert_allclose(_project(matrix, TARGET), (800.0, 600.0), atol=1e-6)
    centres = np.stack(centres)
    offsets = centres - TARGET
    distances = np.linalg.norm(offsets, axis=1)
    assert distances.min() > 500 and distances.max() < 650  # mm, like DTU's robot arm
    polar = np.degrees(np.arccos(offsets[:, 2] / distances))
    assert polar.min() > 25 and polar.max() < 85  # a cap above the table, not a full sphere
    assert (offsets[:, 1] < 0).all()  # all on the front side (DTU never looks from behind)
    pairwise = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(64) * 1e9
    assert pairwise.min() > 20  # 64 distinct positions
    # Numbers of the same magnitude as DTU's pos_XXX.txt at 1600x1200 (focal ~2900 px, ~0.5 m away).
    assert 1e3 < np.abs(cameras[:, :2, :3]).max() < 5e3
    assert 1e5 < np.abs(cameras[:, :2, 3]).max() < 1e6
    assert 100 < np.abs(cameras[:, 2, 3]).max() < 1e3


# ---- geometric consistency of the rendering with the camera files -------------------------------


def _pixel_rays(matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre and unit rays through the pixel centres (x + 0.5, y + 0.5), from the file's matrix."""
    width, height = size
    _, _, center = decompose_projection(matrix)
    x, y = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pixels = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    rays = np.linalg.solve(matrix[:, :3], pixels).T
    return center, rays / np.linalg.norm(rays, axis=1, keepdims=True)


def _spheres(scene) -> tuple[list[tuple[np.ndarray, float]], list[tuple[np.ndarray, float]]]:
    """(inner, outer) spheres of every object: inside the solid / enclosing it. For a sphere both are
    the sphere itself, so its silhouette is pinned down exactly."""
    inner, outer = [], []
    for prim in scene.objects:
        if prim.kind == "sphere":
            r = float(prim.size[0])
            center = prim.base + np.array([0.0, 0.0, r])
            inner.append((center, r))
            outer.append((center, r))
            continue
        half_height = float(prim.size[-1]) / 2
        center = prim.base + np.array([0.0, 0.0, half_height])
        half_widths = [float(prim.size[0]), float(prim.size[1])] if prim.kind == "box" else [float(prim.size[0])] * 2
        inner.append((center, min(*half_widths, half_height)))
        outer.append((center, math.sqrt(sum(w * w for w in half_widths) + half_height**2)))
    return inner, outer


def _ray_distance(origin: np.ndarray, rays: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, float]:
    """Distance of `point` from each ray (N,), and from the ray origin."""
    offset = point - origin
    return np.linalg.norm(np.cross(rays, offset), axis=1), float(np.linalg.norm(offset))


def test_silhouettes_agree_with_the_camera_files_to_the_pixel(hires_root):
    """For every view, rays built from the *written* camera file that pass inside an object must be in
    the written mask, and rays that miss every object's bounding sphere must not. The margin is 0.4 px,
    so cameras a pixel off (or a half-pixel convention mismatch) fail."""
    cameras = dtu.load_cameras(hires_root)
    scene = synthetic_scene(0, 21)
    inner, outer = _spheres(scene)
    assert any(p.kind == "sphere" for p in scene.objects)  # exact silhouettes are part of the check
    focal = DTU_FOCAL_1600 * 160 / 1600
    inside_total = outside_total = 0
    for cam in range(dtu.NUM_VIEWS):
        mask = _mask(hires_root, 21, cam).ravel()
        origin, rays = _pixel_rays(cameras[cam], (160, 120))

        inside = np.zeros(mask.shape, bool)
        outside = np.ones(mask.shape, bool)
        for (c_in, r_in), (c_out, r_out) in zip(inner, outer, strict=True):
            dist, depth = _ray_distance(origin, rays, c_in)
            inside |= dist < r_in - 0.4 * depth / focal
            dist, depth = _ray_distance(origin, rays, c_out)
            outside &= dist > r_out + 0.4 * depth / focal
        assert mask[inside].all(), f"cam {cam}: {int((~mask[inside]).sum())} pixels inside an object are unmasked"
        assert not mask[outside].any(), f"cam {cam}: {int(mask[outside].sum())} pixels away from objects are masked"
        inside_total += int(inside.sum())
        outside_total += int(outside.sum())
    assert inside_total > 49 * 200 and outside_total > 49 * 5000


def test_table_texture_is_seen_at_the_same_place_from_different_views(hires_root):
    """Centres of the table's checker cells, projected with the camera files, must show their cell's
    colour in every view that sees them: the table is flat and Lambertian, so under one light it has
    exactly two colours, one per cell parity, whatever the viewpoint. Cameras that disagree with the
    rendering (wrong view, mirrored, a few pixels off) land on cells of the other parity and fail."""
    cameras = dtu.load_cameras(hires_root)
    scale = synthetic_scene(0, 21).table.texture_scale
    images = [_rgb(hires_root / dtu.image_relpath(21, cam, 3)).astype(int) for cam in range(dtu.NUM_VIEWS)]
    masks = [_mask(hires_root, 21, cam) for cam in range(dtu.NUM_VIEWS)]
    cells = [(i, j) for i in range(-7, 8) for j in range(-7, 8) if math.hypot(i + 0.25, j + 0.25) * scale < 240]
    seen: dict[int, list[np.ndarray]] = {0: [], 1: []}
    views_per_cell = []
    for i, j in cells:
        point = np.array([(i + 0.25) * scale, (j + 0.25) * scale, 0.0])  # texture phase is +0.25 cell
        views = 0
        for cam in range(dtu.NUM_VIEWS):
            u, v = _project(cameras[cam], point)
            x, y = int(u), int(v)
            if not (1 <= x < 159 and 1 <= y < 119) or masks[cam][y - 1:y + 2, x - 1:x + 2].any():
                continue
            patch = images[cam][y - 1:y + 2, x - 1:x + 2].reshape(9, 3)
            if np.abs(patch - patch[4]).max() <= 2:  # well inside one cell in this view
                seen[(i + j) % 2].append(patch[4])
                views += 1
        views_per_cell.append(views)
    assert sum(v >= 2 for v in views_per_cell) >= 20  # many cells seen from several views
    for parity, colours in seen.items():
        colours = np.stack(colours)
        assert np.abs(colours - colours[0]).max() <= 2, f"cells of parity {parity} show several colours"
    assert np.abs(seen[0][0] - seen[1][0]).max() > 10  # the two checker colours differ: the test has teeth


# ---- lights -------------------------------------------------------------------------------------


def test_light_changes_shading_but_not_the_mask(synthetic_dtu_root):
    root = Path(synthetic_dtu_root)
    for cam in (0, 25, 48):
        mask = _mask(root, 21, cam)
        images = np.stack([_rgb(root / dtu.image_relpath(21, cam, light)).astype(int) for light in range(7)])
        changes = np.abs(images - images[3]).max(axis=-1)  # vs the protocol's light 3
        for light in (0, 1, 5, 6):
            assert changes[light][mask].mean() > 5, f"light {light} barely changes the objects"
        # Pixels identical under all 7 lights are the sky background: never part of the object mask.
        constant = (images == images[0]).all(axis=(0, 3))
        assert constant.any() and not (constant & mask).any()
        assert images[3][mask].mean() > images[0][mask].mean()  # light 3 is the brightest
    # The silhouette is a property of the view: rendering other lights leaves the mask unchanged.
    view_a = synthetic.render_view(synthetic_scene(0, 21), synthetic_cameras(SYNTHETIC_SIZE)[7], SYNTHETIC_SIZE, [0])
    view_b = synthetic.render_view(synthetic_scene(0, 21), synthetic_cameras(SYNTHETIC_SIZE)[7], SYNTHETIC_SIZE, [6])
    np.testing.assert_array_equal(view_a.mask, view_b.mask)
    np.testing.assert_array_equal(view_a.mask, _mask(root, 21, 7))
    assert not np.array_equal(view_a.images[0], view_b.images[6])


# ---- determinism and variety --------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(synthetic_dtu_root, tmp_path):
    """Re-rendering scan 21 (light 3 only) reproduces the session tree's files byte for byte."""
    again = make_synthetic_dtu(tmp_path / "again", [21], size=SYNTHETIC_SIZE, seed=0, lights=[3], progress=False)
    reference, repeat = _tree_digest(Path(synthetic_dtu_root)), _tree_digest(again)
    shared = [name for name in repeat if "_max" not in name]
    assert len(shared) == 64 + 49 + 49  # cameras, light-3 images, masks
    assert all(repeat[name] == reference[name] for name in shared)


def test_different_seed_gives_a_different_scene_with_the_same_cameras(synthetic_dtu_root, tmp_path):
    other = make_synthetic_dtu(tmp_path / "seed1", [21], size=SYNTHETIC_SIZE, seed=1, lights=[3], progress=False)
    root = Path(synthetic_dtu_root)
    np.testing.assert_array_equal(dtu.load_cameras(other), dtu.load_cameras(root))
    differing = sum(not np.array_equal(_mask(other, 21, cam), _mask(root, 21, cam)) for cam in range(49))
    assert differing == 49
    bases = [np.concatenate([p.base for p in synthetic_scene(seed, 21).objects]) for seed in (0, 1)]
    assert bases[0].shape != bases[1].shape or not np.allclose(*bases)


def test_different_scans_are_different_scenes(synthetic_dtu_root):
    root = Path(synthetic_dtu_root)
    for cam in (0, 25):
        a, b, c = (_rgb(root / dtu.image_relpath(s, cam, 3)) for s in SYNTHETIC_SCANS)
        assert np.abs(a.astype(int) - b).mean() > 5 and np.abs(b.astype(int) - c).mean() > 5
        assert (_mask(root, 21, cam) != _mask(root, 114, cam)).mean() > 0.02
    # Every DTU scan number gets its own layout of objects.
    layouts = {tuple(np.round(np.concatenate([p.base for p in synthetic_scene(0, s).objects]), 3))
               for s in dtu.ALL_SCANS}
    assert len(layouts) == len(dtu.ALL_SCANS)


def test_archives_are_deterministic_and_shaped_like_the_releases(synthetic_dtu_root, synthetic_archives, tmp_path):
    again = write_archives(synthetic_dtu_root, tmp_path / "again")
    for name, path in synthetic_archives.items():
        assert Path(path).read_bytes() == again[name].read_bytes(), f"{name}.zip is not reproducible"
    root = Path(synthetic_dtu_root)
    with zipfile.ZipFile(synthetic_archives["Rectified"]) as zf:
        files = [n for n in zf.namelist() if not n.endswith("/")]
        assert len(files) == len(SYNTHETIC_SCANS) * (49 * 7 + 49)
        assert all(n.startswith("Rectified/scan") for n in files)
        member = dtu.image_relpath(114, 30, 2)
        assert zf.read(member) == (root / member).read_bytes()
    with zipfile.ZipFile(synthetic_archives["SampleSet"]) as zf:
        cams = {dtu.parse_calibration_member(n): n for n in zf.namelist()}
        cams.pop(None, None)
        assert sorted(cams) == list(range(64))
        assert cams[0] == f"{dtu.SAMPLESET_CALIBRATION_DIR}/pos_001.txt"
        assert zf.read(cams[63]) == (root / dtu.camera_relpath(63)).read_bytes()
    with zipfile.ZipFile(synthetic_archives["idrmasks"]) as zf:
        masks = [n for n in zf.namelist() if not n.endswith("/")]
        assert {dtu.parse_mask_member(n) for n in masks} == {(s, c) for s in (21, 114) for c in range(49)}
        # Both layouts of the RegNeRF release appear: scan{N}/mask/000.png and scan{N}/000.png.
        assert "submission_data/idrmasks/scan21/mask/000.png" in masks
        assert "submission_data/idrmasks/scan114/000.png" in masks


# ---- writing safely -----------------------------------------------------------------------------


def test_a_crash_mid_way_publishes_nothing(tmp_path, monkeypatch):
    real_render, calls = synthetic.render_view, []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("simulated crash while rendering")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_view", failing_render)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_synthetic_dtu(out, [21], size=(32, 24), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temp tree is gone too

    # Replacing an existing tree: a crash keeps the old tree untouched.
    monkeypatch.setattr(synthetic, "render_view", real_render)
    make_synthetic_dtu(out, [2], size=(32, 24), lights=[3], progress=False)
    before = _tree_digest(out)
    calls.clear()
    monkeypatch.setattr(synthetic, "render_view", failing_render)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_synthetic_dtu(out, [21], size=(32, 24), progress=False, overwrite=True)
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_empty_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        make_synthetic_dtu(out, [2], size=(32, 24), lights=[3], progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    make_synthetic_dtu(out, [2], size=(32, 24), lights=[3], progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["Calibration", "Rectified"]


def test_published_files_have_ordinary_permissions(tmp_path):
    """The tree is built in a private temp dir and renamed into place; it must not stay private
    (workers running as another user read it)."""
    (tmp_path / "plain_dir").mkdir()
    (tmp_path / "plain_file").write_bytes(b"")
    out = make_synthetic_dtu(tmp_path / "out", [2], size=(32, 24), lights=[3], progress=False, archive=True)
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777
    for archive in (out / "archives").iterdir():
        assert archive.stat().st_mode & 0o777 == (tmp_path / "plain_file").stat().st_mode & 0o777


@pytest.mark.parametrize("size", [(32, 25), (100, 100), (0, 0), (-4, -3)])
def test_bad_sizes_are_rejected(size):
    with pytest.raises(ValueError, match="4:3|positive"):
        synthetic.check_size(size)


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_make_synthetic_with_archive(tmp_path):
    out = tmp_path / "syn"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "viewneti_cli.viewneti", "data", "make-synthetic", "--out", str(out), "--scans", "21",
         "--size", "32x24", "--seed", "3", "--archive", "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote synthetic DTU scans [21] (32x24, seed 3)" in result.stdout
    assert len(list((out / "Rectified/scan21").iterdir())) == 49 * 8
    assert dtu.load_cameras(out).shape == (64, 3, 4)
    assert len(list((out / "masks/scan21").iterdir())) == 49
    with Image.open(out / dtu.image_relpath(21, 0, 3)) as image:
        assert image.size == (32, 24)
    assert sorted(p.name for p in (out / "archives").iterdir()) == ["Rectified.zip", "SampleSet.zip", "idrmasks.zip"]
    with zipfile.ZipFile(out / "archives/Rectified.zip") as zf:
        assert zf.read(dtu.image_relpath(21, 5, 3)) == (out / dtu.image_relpath(21, 5, 3)).read_bytes()
    # The CLI and the library agree: seed 3 via the API gives the same files.
    api = make_synthetic_dtu(tmp_path / "api", [21], size=(32, 24), seed=3, lights=[3], progress=False)
    assert (api / dtu.image_relpath(21, 40, 3)).read_bytes() == (out / dtu.image_relpath(21, 40, 3)).read_bytes()


def test_cli_rejects_a_non_4_3_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["data", "make-synthetic", "--out", str(tmp_path / "x"), "--scans", "21", "--size", "32x25"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--size" in err and "4:3" in err and "32x25" in err
    assert not (tmp_path / "x").exists()


def test_cli_rejects_a_non_empty_out(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = cli.main(["data", "make-synthetic", "--out", str(out), "--scans", "21", "--size", "32x24", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("flag", "value", "pattern"), [
    ("--scans", "8,x", "comma-separated scan numbers"),
    ("--scans", "0,200", r"1\.\.128"),
    ("--size", "160by120", "WIDTHxHEIGHT"),
])
def test_cli_argument_errors(tmp_path, capsys, flag, value, pattern):
    argv = ["data", "make-synthetic", "--out", str(tmp_path / "x"), "--scans", "21", "--size", "32x24"]
    argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert re.search(pattern, capsys.readouterr().err)
