"""cameras.json capture folders (docs/cameras_json.md): the three camera forms, conversions, errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viewneti_core.data.camera_files import (
    CAMERAS_JSON,
    CameraFileError,
    load_camera_folder,
    projection_from_pose,
    spherical_from_projection,
)
from viewneti_core.data.cameras import (
    CameraNormalization,
    decompose_projection,
    intrinsics_for_size,
    look_at_extrinsics,
    spherical_to_center,
)
from viewneti_core.data.synthetic import synthetic_cameras

K = np.array([[300.0, 0.0, 80.0], [0.0, 310.0, 60.0], [0.0, 0.0, 1.0]])
K_DICT = {"fx": 300.0, "fy": 310.0, "cx": 80.0, "cy": 60.0}
# (theta, phi, radius) of a few cameras around the origin, phi already in (-pi, pi].
SPHERICAL = [(0.9, -1.2, 550.0), (1.3, 2.9, 480.0), (0.4, -3.0, 610.0), (1.1, 0.3, 520.0)]


def _camera(theta: float, phi: float, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(projection, 4x4 OpenCV cam-to-world, centre) of a camera at the given spot looking at the origin."""
    center = spherical_to_center(theta, phi, radius)
    rt = look_at_extrinsics(center, np.zeros(3))
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = rt[:, :3].T
    cam_to_world[:3, 3] = center
    return K @ rt, cam_to_world, center


def _write_folder(folder: Path, doc: dict, extra_images: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for entry in doc.get("images", []):
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            path = folder / entry["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 12), (120, 60, 30)).save(path)
    for name in extra_images:
        Image.new("RGB", (16, 12)).save(folder / name)
    (folder / CAMERAS_JSON).write_text(json.dumps(doc))
    return folder


def _all_forms_doc(pose_convention: str = "opencv") -> dict:
    """The same four cameras, each written in a different form."""
    images = []
    for i, (theta, phi, radius) in enumerate(SPHERICAL):
        projection, cam_to_world, _ = _camera(theta, phi, radius)
        if pose_convention == "opengl":
            cam_to_world = cam_to_world @ np.diag([1.0, -1.0, -1.0, 1.0])
        forms = [
            {"projection": projection.tolist()},
            {"intrinsics": K.tolist(), "cam_to_world": cam_to_world.tolist()},
            {"intrinsics": K_DICT, "cam_to_world": cam_to_world[:3].tolist()},
            {"spherical": {"theta": theta, "phi": phi, "radius": radius}, "intrinsics": K_DICT},
        ]
        images.append({"file": f"img_{i:03d}.png", **forms[i]})
    return {"images": images, "pose_convention": pose_convention}


# ---- conversions --------------------------------------------------------------------------------


def test_all_three_forms_give_the_same_projection(tmp_path):
    folder = load_camera_folder(_write_folder(tmp_path / "cap", _all_forms_doc()), "dtu-12d")
    assert folder.cameras.shape == (4, 3, 4)
    assert [p.name for p in folder.image_paths] == [f"img_{i:03d}.png" for i in range(4)]
    for i, spot in enumerate(SPHERICAL):
        expected, _, _ = _camera(*spot)
        np.testing.assert_allclose(folder.cameras[i], expected, rtol=1e-10, atol=1e-7)


def test_projection_maps_world_points_like_the_pose_says(tmp_path):
    """Independent check of P = K [R|t]: a world point X lands at K * (R_c2w^T (X - C)), OpenCV axes."""
    _, cam_to_world, center = _camera(*SPHERICAL[0])
    projection = projection_from_pose(K, cam_to_world)
    rng = np.random.default_rng(0)
    for point in rng.uniform(-50, 50, size=(5, 3)):
        in_camera = cam_to_world[:3, :3].T @ (point - center)
        assert in_camera[2] > 0  # in front of the camera (z forward)
        expected = K @ in_camera
        got = projection @ np.append(point, 1.0)
        np.testing.assert_allclose(got[:2] / got[2], expected[:2] / expected[2], rtol=1e-10)
    # The looked-at origin projects onto the principal point.
    origin = projection @ np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(origin[:2] / origin[2], K[:2, 2], atol=1e-9)
    # x right / y down: a point above the origin (world +z is up in the image) has a smaller v.
    above = projection @ np.array([0.0, 0.0, 20.0, 1.0])
    assert above[1] / above[2] < K[1, 2]


def test_opengl_pose_convention_is_converted(tmp_path):
    folder_cv = load_camera_folder(_write_folder(tmp_path / "cv", _all_forms_doc("opencv")), "dtu-12d")
    folder_gl = load_camera_folder(_write_folder(tmp_path / "gl", _all_forms_doc("opengl")), "dtu-12d")
    np.testing.assert_allclose(folder_gl.cameras, folder_cv.cameras, rtol=1e-10, atol=1e-7)


def test_spherical_representation_from_every_form(tmp_path):
    folder = load_camera_folder(_write_folder(tmp_path / "cap", _all_forms_doc()), "spherical")
    assert folder.cameras.shape == (4, 3)
    np.testing.assert_allclose(folder.cameras, np.array(SPHERICAL), rtol=1e-9, atol=1e-9)
    assert folder.normalization.representation == "spherical"


def test_spherical_from_projection_round_trips_with_spherical_to_center():
    rng = np.random.default_rng(1)
    spots = [(float(rng.uniform(0.05, math.pi - 0.05)), float(rng.uniform(-math.pi, math.pi)),
              float(rng.uniform(1.0, 900.0))) for _ in range(20)] + [(1.0, math.pi, 3.0), (0.7, -math.pi / 2, 500.0)]
    for theta, phi, radius in spots:
        projection, _, center = _camera(theta, phi, radius)
        got = spherical_from_projection(projection)
        np.testing.assert_allclose(spherical_to_center(*got), center, rtol=1e-9, atol=1e-8)
        np.testing.assert_allclose(got, [theta, phi, radius], rtol=1e-9, atol=1e-9)
        assert -math.pi < got[1] <= math.pi


def test_spherical_from_projection_on_dtu_like_cameras():
    """The 'spherical' representation must work for DTU calibration files (here the synthetic set)."""
    cameras = synthetic_cameras((160, 120))
    vectors = np.stack([spherical_from_projection(p) for p in cameras])
    for matrix, vector in zip(cameras, vectors, strict=True):
        _, _, center = decompose_projection(matrix)
        np.testing.assert_allclose(spherical_to_center(*vector), center, rtol=1e-9, atol=1e-6)
    assert ((vectors[:, 0] > 0) & (vectors[:, 0] < math.pi / 2)).all()  # all above the table
    assert len(np.unique(vectors.round(6), axis=0)) == 64
    norm = CameraNormalization.from_cameras(vectors, "spherical")
    assert all(lo < hi for lo, hi in zip(norm.minimum, norm.maximum, strict=True))


# ---- normalisation ------------------------------------------------------------------------------


def test_normalisation_covers_all_listed_and_extra_cameras(tmp_path):
    doc = _all_forms_doc()
    folder = load_camera_folder(_write_folder(tmp_path / "a", doc), "dtu-12d")
    flat = folder.cameras.reshape(len(folder), 12)
    np.testing.assert_allclose(folder.normalization.minimum, flat.min(axis=0))
    np.testing.assert_allclose(folder.normalization.maximum, flat.max(axis=0))

    extra = [_camera(0.2, 1.0, 900.0)[0], _camera(1.5, -2.0, 300.0)[0]]
    doc["normalization_cameras"] = [{"projection": extra[0].tolist()},
                                    {"spherical": {"theta": 1.5, "phi": -2.0, "radius": 300.0}, "intrinsics": K_DICT}]
    widened = load_camera_folder(_write_folder(tmp_path / "b", doc), "dtu-12d")
    assert len(widened) == 4  # extra cameras only feed the ranges, they are not training images
    everything = np.concatenate([flat, np.stack(extra).reshape(2, 12)])
    np.testing.assert_allclose(widened.normalization.minimum, everything.min(axis=0), rtol=1e-10, atol=1e-7)
    np.testing.assert_allclose(widened.normalization.maximum, everything.max(axis=0), rtol=1e-10, atol=1e-7)
    assert widened.normalization.minimum != folder.normalization.minimum

    spherical = load_camera_folder(tmp_path / "b", "spherical")
    radii = [s[2] for s in SPHERICAL] + [900.0, 300.0]
    assert spherical.normalization.minimum[2] == pytest.approx(min(radii))
    assert spherical.normalization.maximum[2] == pytest.approx(max(radii))


def test_top_level_intrinsics_default_and_subfolders(tmp_path):
    _, cam_to_world, _ = _camera(*SPHERICAL[1])
    doc = {
        "intrinsics": K.tolist(),
        "comment": "phone capture",
        "images": [
            {"file": "views/a.jpg", "cam_to_world": cam_to_world.tolist()},
            {"file": "views/b.jpg", "spherical": {"theta": SPHERICAL[1][0], "phi": SPHERICAL[1][1],
                                                  "radius": SPHERICAL[1][2]}},
        ],
    }
    folder = load_camera_folder(_write_folder(tmp_path / "cap", doc) / CAMERAS_JSON, "dtu-12d")  # the file works too
    assert folder.image_paths == [tmp_path / "cap/views/a.jpg", tmp_path / "cap/views/b.jpg"]
    np.testing.assert_allclose(folder.cameras[0], _camera(*SPHERICAL[1])[0], rtol=1e-10, atol=1e-7)
    np.testing.assert_allclose(folder.cameras[1], folder.cameras[0], rtol=1e-10, atol=1e-7)


def test_unlisted_images_warn_by_default_and_can_error(tmp_path):
    root = _write_folder(tmp_path / "cap", _all_forms_doc(), extra_images=("stray.png",))
    with pytest.warns(UserWarning, match=r"not listed.*stray\.png"):
        folder = load_camera_folder(root, "dtu-12d")
    assert folder.unlisted == ("stray.png",) and len(folder) == 4
    with pytest.raises(CameraFileError, match=r"stray\.png.*add them to 'images'"):
        load_camera_folder(root, "dtu-12d", unlisted="error")
    assert load_camera_folder(root, "dtu-12d", unlisted="ignore").unlisted == ("stray.png",)


# ---- errors -------------------------------------------------------------------------------------


def _entry_error(tmp_path: Path, entry: dict, representation: str = "dtu-12d", **top) -> str:
    good = {"file": "ok.png", "projection": _camera(*SPHERICAL[0])[0].tolist()}
    doc = {"images": [good, entry], **top}
    root = _write_folder(tmp_path / f"case{len(list(tmp_path.iterdir()))}", doc)
    with pytest.raises(CameraFileError) as info:
        load_camera_folder(root, representation)
    message = str(info.value)
    assert str(root / CAMERAS_JSON) in message  # every error names the file ...
    return message


P0 = _camera(*SPHERICAL[0])[0]
C2W0 = _camera(*SPHERICAL[0])[1]


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ({"file": "x.png", "projection": P0[:, :3].tolist()}, r"'projection' must be 3x4, got shape \(3, 3\)"),
        ({"file": "x.png", "projection": P0.ravel().tolist()}, r"nested rows .* not a flat list of 12"),
        ({"file": "x.png", "projection": [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]]}, r"rows of different lengths"),
        ({"file": "x.png", "projection": [[1, 0, 0, "a"], [0, 1, 0, 0], [0, 0, 1, 0]]}, r"only numbers.*'a'"),
        ({"file": "x.png", "projection": [[True, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]}, r"only numbers.*True"),
        ({"file": "x.png", "projection": [[0, 0, 0, 1]] * 3}, r"singular"),
        ({"file": "x.png", "projection": P0.tolist(), "focal": 3}, r"unknown key\(s\) \['focal'\]"),
        ({"file": "x.png", "projection": P0.tolist(), "intrinsics": K.tolist()}, r"drop 'intrinsics'"),
        ({"file": "x.png", "projection": P0.tolist(), "spherical": {"theta": 1, "phi": 0, "radius": 2}},
         r"exactly one camera form.*found \['projection', 'spherical'\]"),
        ({"file": "x.png"}, r"exactly one camera form.*found none"),
        ({"file": "x.png", "cam_to_world": C2W0.tolist()}, r"'intrinsics' are needed for 'cam_to_world'"),
        ({"file": "x.png", "intrinsics": K.tolist(), "cam_to_world": (C2W0 * 2).tolist()},
         r"last row .* must be \[0, 0, 0, 1\]"),
        ({"file": "x.png", "intrinsics": K.tolist(), "cam_to_world": (C2W0 @ np.diag([2.0, 1, 1, 1])).tolist()},
         r"must be a rotation"),
        ({"file": "x.png", "intrinsics": K.tolist(), "cam_to_world": (C2W0 @ np.diag([1.0, 1, -1, 1])).tolist()},
         r"must be a rotation .*det = -1"),
        ({"file": "x.png", "intrinsics": {"fx": 3, "fy": 3, "cx": 1}, "cam_to_world": C2W0.tolist()},
         r"exactly the keys \['fx', 'fy', 'cx', 'cy'\]"),
        ({"file": "x.png", "intrinsics": {**K_DICT, "fx": -3.0}, "cam_to_world": C2W0.tolist()},
         r"focal lengths .* positive"),
        ({"file": "x.png", "intrinsics": [[300, 0, 80], [0, 310, 60], [0, 0, 2]], "cam_to_world": C2W0.tolist()},
         r"\[0, 0, 1\]"),
        ({"file": "x.png", "spherical": {"theta": 45, "phi": 0, "radius": 2}, "intrinsics": K_DICT},
         r"theta .* 0\.\.pi; got 45.0 \(degrees\?"),
        ({"file": "x.png", "spherical": {"theta": 1, "phi": 0}, "intrinsics": K_DICT},
         r"exactly \['theta', 'phi', 'radius'\]"),
        ({"file": "x.png", "spherical": {"theta": 1, "phi": 0, "radius": 0}, "intrinsics": K_DICT},
         r"radius must be positive"),
        ({"file": "x.png", "spherical": {"theta": 1, "phi": 0, "radius": 2}},
         r"'intrinsics' are needed for a 'spherical' camera in the dtu-12d representation"),
        ({"file": "../x.png", "projection": P0.tolist()}, r"inside the folder"),
        ({"file": "ok.png", "projection": P0.tolist()}, r"'ok.png' is already listed as images\[0\]"),
        ({"projection": P0.tolist()}, r"needs a 'file'"),
    ],
)
def test_entry_errors_name_the_file_and_the_entry(tmp_path, entry, pattern):
    message = _entry_error(tmp_path, entry)
    assert re.search(pattern, message), message
    assert "images[1]" in message  # ... and the entry


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_numbers_are_rejected(tmp_path, bad):
    projection = P0.copy()
    projection[1, 2] = bad
    root = _write_folder(tmp_path / "cap", {"images": [{"file": "a.png", "projection": projection.tolist()}]})
    assert ("NaN" if math.isnan(bad) else "Infinity") in (root / CAMERAS_JSON).read_text()  # JSON allows these
    with pytest.raises(CameraFileError, match=r"images\[0\] \('a.png'\): 'projection' contains non-finite"):
        load_camera_folder(root)


def test_missing_image_file_is_named(tmp_path):
    root = _write_folder(tmp_path / "cap", {"images": [{"file": "a.png", "projection": P0.tolist()}]})
    (root / "a.png").unlink()
    with pytest.raises(CameraFileError, match=r"images\[0\] \('a.png'\): image file .*a\.png does not exist"):
        load_camera_folder(root)


def test_spherical_without_intrinsics_is_fine_for_the_spherical_representation(tmp_path):
    doc = {"images": [{"file": "a.png", "spherical": {"theta": 1.0, "phi": 5.0, "radius": 2.0}}]}
    folder = load_camera_folder(_write_folder(tmp_path / "cap", doc), "spherical")
    np.testing.assert_allclose(folder.cameras[0], [1.0, 5.0 - 2 * math.pi, 2.0])  # phi wrapped to (-pi, pi]


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ({"cameras": []}, r"unknown top-level key\(s\) \['cameras'\]"),
        ({"images": []}, r"'images' is empty"),
        ({"images": {"a.png": {}}}, r"'images' must be a list"),
        ([1, 2], r"top level must be an object"),
        ({"images": [{"file": "a.png", "projection": P0.tolist()}], "pose_convention": "blender"},
         r"'pose_convention' must be one of \['opencv', 'opengl'\]"),
        ({"images": [{"file": "a.png", "projection": P0.tolist()}],
          "normalization_cameras": [{"file": "b.png", "projection": P0.tolist()}]},
         r"normalization_cameras\[0\].*unknown key\(s\) \['file'\].*no image file"),
    ],
)
def test_document_errors(tmp_path, doc, pattern):
    root = tmp_path / "cap"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / CAMERAS_JSON).write_text(json.dumps(doc))
    with pytest.raises(CameraFileError, match=pattern):
        load_camera_folder(root, "dtu-12d")


def test_missing_and_broken_cameras_json(tmp_path):
    with pytest.raises(CameraFileError, match=r"cameras\.json not found.*docs/cameras_json\.md"):
        load_camera_folder(tmp_path)
    (tmp_path / CAMERAS_JSON).write_text("{not json")
    with pytest.raises(CameraFileError, match="not valid JSON"):
        load_camera_folder(tmp_path)
    with pytest.raises(ValueError, match="unknown camera representation"):
        load_camera_folder(tmp_path, "fov")


def test_camera_file_error_is_a_value_error():
    # The CLI reports ValueErrors as user mistakes (no traceback).
    assert issubclass(CameraFileError, ValueError)


def test_dtu_intrinsics_example_matches_doc_numbers():
    # docs/cameras_json.md quotes DTU's focal length scaled to 512x384; keep the two in sync.
    k = intrinsics_for_size(512, 384)
    assert k[0, 0] == pytest.approx(925.55, abs=0.01) and tuple(k[:2, 2]) == (256.0, 192.0)


def test_the_documented_example_loads(tmp_path):
    """docs/cameras_json.md's example is complete and valid, and its forms agree with each other."""
    text = (Path(__file__).resolve().parents[1] / "docs/cameras_json.md").read_text()
    doc = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    root = _write_folder(tmp_path / "cap", doc)
    folder = load_camera_folder(root, "dtu-12d")
    assert [p.relative_to(root).as_posix() for p in folder.image_paths] == [
        "img_000.png", "img_001.png", "views/img_002.jpg", "img_003.png"]
    assert folder.cameras.shape == (4, 3, 4)
    for matrix in folder.cameras:  # DTU-like intrinsics at 512x384 whatever the form
        k, _, _ = decompose_projection(matrix)
        np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], [925.55, 925.55, 256.0, 192.0], rtol=2e-3)
    spherical = load_camera_folder(root, "spherical")
    np.testing.assert_allclose(spherical.cameras[3], [1.2336, -2.0627, 580.6229])
    assert spherical.normalization.maximum[2] >= 580.0
