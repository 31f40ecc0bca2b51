"""DTU facts: file layout, camera files, view splits and scan lists (DESIGN 3.8).

Everything that knows how the DTU MVS release is laid out lives here, so the synthetic generator,
the preparation step and the datasets cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: config.py (and so `viewneti --help`) needs only the facts
    import numpy as np

NUM_CAMERAS = 64  # calibration files cal18/pos_001.txt .. pos_064.txt
NUM_VIEWS = 49  # rectified images per scan and light
NUM_LIGHTS = 7  # light indices 0..6
DEFAULT_LIGHT = 3  # the evaluation protocol uses light 3
ORIGINAL_SIZE = (1600, 1200)  # (width, height) of DTU rectified images

# View indices are 0-based camera indices.
TRAIN_VIEWS = (25, 22, 28, 40, 44, 48, 0, 8, 13)  # an n-view run uses the first n
EXCLUDED_VIEWS = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
TEST_VIEWS = tuple(i for i in range(NUM_VIEWS) if i not in TRAIN_VIEWS and i not in EXCLUDED_VIEWS)
EVAL_VIEWS = TRAIN_VIEWS + TEST_VIEWS  # the 34 views rendered by evaluation

TEST_SCANS = (8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114)
# Scans too similar to the test scans; never used for pretraining.
EXCLUDED_PRETRAIN_SCANS = (1, 2, 7, 25, 26, 27, 29, 39, 51, 54, 56, 57, 58, 73, 83, 111, 112, 113, 115, 116, 117)
# The DTU MVS release has 124 scans: 1..128 without 78..81.
ALL_SCANS = tuple(s for s in range(1, 129) if not 78 <= s <= 81)
PRETRAIN_SCANS = tuple(s for s in ALL_SCANS if s not in TEST_SCANS and s not in EXCLUDED_PRETRAIN_SCANS)

SUBSET_KEYS = (0, 1, 3, 6, 9, -1, -2, -3)

# Official archives of the DTU MVS release.
RECTIFIED_URL = "http://roboimagedata2.compute.dtu.dk/data/MVS/Rectified.zip"
SAMPLESET_URL = "http://roboimagedata2.compute.dtu.dk/data/MVS/SampleSet.zip"
SAMPLESET_CALIBRATION_DIR = "SampleSet/MVS Data/Calibration/cal18"

assert len(TEST_VIEWS) == 25 and len(EVAL_VIEWS) == 34
assert len(PRETRAIN_SCANS) == 88


def subset_views(key: int) -> tuple[int, ...]:
    """Camera indices selected by a `data.dtu_subset` key of the original config."""
    if key == 0:
        return EVAL_VIEWS
    if key in (1, 3, 6, 9):
        return TRAIN_VIEWS[:key]
    if key in (-1, -2, -3):
        return tuple(range(12, 36))[:: -key]
    raise ValueError(f"unknown DTU subset key {key!r}; valid keys are {list(SUBSET_KEYS)}")


def train_views(n_views: int) -> tuple[int, ...]:
    """The first `n_views` training views of the sparse-view protocol."""
    if not 1 <= n_views <= len(TRAIN_VIEWS):
        raise ValueError(f"n_views must be in 1..{len(TRAIN_VIEWS)}, got {n_views}")
    return TRAIN_VIEWS[:n_views]


def view_role(cam: int) -> str:
    """'train', 'test' or 'excluded' for a 0-based camera index of the 49 views."""
    if cam in TRAIN_VIEWS:
        return "train"
    if cam in TEST_VIEWS:
        return "test"
    if cam in EXCLUDED_VIEWS:
        return "excluded"
    raise ValueError(f"camera index {cam} is outside 0..{NUM_VIEWS - 1}")


# ---- file layout -------------------------------------------------------------------------------


def image_relpath(scan: int, cam: int, light: int = DEFAULT_LIGHT) -> str:
    """`Rectified/scan{N}/rect_{cam+1:03d}_{light}_r5000.png` (cam 0-based)."""
    return f"Rectified/scan{scan}/rect_{cam + 1:03d}_{light}_r5000.png"


def camera_relpath(cam: int) -> str:
    """`Calibration/cal18/pos_{cam+1:03d}.txt` (cam 0-based)."""
    return f"Calibration/cal18/pos_{cam + 1:03d}.txt"


def mask_relpath(scan: int, cam: int) -> str:
    """Normalised mask location used by prepared trees: `masks/scan{N}/{cam:03d}.png`."""
    return f"masks/scan{scan}/{cam:03d}.png"


def find_mask(root: Path, scan: int, cam: int) -> Path | None:
    """Find a mask in any of the layouts we accept (prepared tree or the RegNeRF/IDR release)."""
    root = Path(root)
    candidates = (
        root / mask_relpath(scan, cam),
        root / f"submission_data/idrmasks/scan{scan}/mask/{cam:03d}.png",
        root / f"submission_data/idrmasks/scan{scan}/{cam:03d}.png",
        root / f"idrmasks/scan{scan}/mask/{cam:03d}.png",
        root / f"idrmasks/scan{scan}/{cam:03d}.png",
    )
    return next((p for p in candidates if p.is_file()), None)


# ---- cameras -----------------------------------------------------------------------------------


def parse_projection_matrix(text: str, source: str = "<text>") -> np.ndarray:
    """Parse one DTU `pos_XXX.txt`: 12 ASCII numbers forming a 3x4 projection matrix."""
    import numpy as np

    try:
        values = [float(tok) for tok in text.split()]
    except ValueError as exc:
        raise ValueError(f"{source}: camera file contains a non-numeric value ({exc})") from None
    if len(values) != 12:
        raise ValueError(f"{source}: expected 12 numbers (a 3x4 projection matrix), found {len(values)}")
    matrix = np.asarray(values, dtype=np.float64).reshape(3, 4)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{source}: camera matrix has non-finite values")
    return matrix


def load_cameras(root: Path) -> np.ndarray:
    """All 64 calibration cameras of a DTU tree as a (64, 3, 4) float64 array."""
    import numpy as np

    root = Path(root)
    mats = []
    for cam in range(NUM_CAMERAS):
        path = root / camera_relpath(cam)
        if not path.is_file():
            raise FileNotFoundError(
                f"missing DTU camera file {path}; a DTU tree needs all {NUM_CAMERAS} files "
                f"Calibration/cal18/pos_001.txt .. pos_{NUM_CAMERAS:03d}.txt"
            )
        mats.append(parse_projection_matrix(path.read_text(), source=str(path)))
    check_distinct_cameras(mats, [root / camera_relpath(cam) for cam in range(NUM_CAMERAS)])
    return np.stack(mats)


def check_distinct_cameras(mats, sources) -> None:
    """Refuse a calibration set with repeated cameras: copies of one file give a camera normalisation
    with no range, which maps every camera to the same (zero) vector and trains without a word."""
    first: dict[bytes, int] = {}
    repeats = []
    for i, mat in enumerate(mats):
        j = first.setdefault(mat.tobytes(), i)
        if j != i:
            repeats.append((i, j))
    if repeats:
        i, j = repeats[0]
        raise ValueError(
            f"{sources[i]} holds the same camera as {sources[j]} ({len(first)} distinct cameras in "
            f"{len(mats)} files): every DTU calibration file must hold its own camera; the calibration "
            "folder is damaged or was filled with copies. Prepare it again from SampleSet.zip")


def format_projection_matrix(matrix: np.ndarray) -> str:
    """Write a 3x4 matrix in the ASCII style of DTU's calibration files."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
    return "\n".join(" ".join(f"{v:.6f}" for v in row) for row in matrix) + "\n"


# ---- archive member names (used to identify what an archive holds) ------------------------------

# Matched anywhere in a member path so re-zipped copies with an extra top folder still work.
_RECTIFIED_MEMBER_RE = re.compile(r"(?:^|/)scan(\d+)/rect_(\d{3})_(\d)_r5000\.png$")
_CALIBRATION_MEMBER_RE = re.compile(r"(?:^|/)Calibration/cal18/pos_(\d{3})\.txt$")
_MASK_MEMBER_RE = re.compile(r"(?:^|/)idrmasks/scan(\d+)/(?:mask/)?(\d{3})\.png$")


def parse_rectified_member(name: str) -> tuple[int, int, int] | None:
    """(scan, 0-based cam, light) of a `.../scan{N}/rect_{cam+1:03d}_{light}_r5000.png` name, else None.

    `rect_XXX_max.png` files do not match and are thereby ignored.
    """
    m = _RECTIFIED_MEMBER_RE.search(name)
    if m is None:
        return None
    scan, cam1, light = _scan_number(m.group(1), name), int(m.group(2)), int(m.group(3))
    if not (1 <= cam1 <= NUM_VIEWS and 0 <= light < NUM_LIGHTS):
        return None
    return scan, cam1 - 1, light


def parse_calibration_member(name: str) -> int | None:
    """0-based camera index of a `.../Calibration/cal18/pos_{cam+1:03d}.txt` name, else None."""
    m = _CALIBRATION_MEMBER_RE.search(name)
    if m is None:
        return None
    cam1 = int(m.group(1))
    return cam1 - 1 if 1 <= cam1 <= NUM_CAMERAS else None


def parse_mask_member(name: str) -> tuple[int, int] | None:
    """(scan, 0-based cam) of an IDR/RegNeRF mask name (`idrmasks/scan{N}/[mask/]{cam:03d}.png`)."""
    m = _MASK_MEMBER_RE.search(name)
    if m is None:
        return None
    scan, cam = _scan_number(m.group(1), name), int(m.group(2))
    return (scan, cam) if 0 <= cam < NUM_VIEWS else None


MAX_SCAN_DIGITS = 6  # DTU's scans are 1..128; a longer number is a damaged or hostile name


def _scan_number(digits: str, name: str) -> int:
    """The scan number of a member name; a digit run Python's int() would refuse (> 4300 digits) or that
    no DTU release has is an error naming the member, never a bare int-conversion traceback."""
    if len(digits) > MAX_SCAN_DIGITS:
        shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]}"
        raise ValueError(f"archive member {shown!r} ({len(name)} characters) has a {len(digits)}-digit scan "
                         f"number; DTU scan numbers have at most {MAX_SCAN_DIGITS} digits: the archive is "
                         "damaged or not a DTU release")
    return int(digits)


def scan_role(scan: int) -> str:
    """'test', 'pretrain' or 'excluded' (too similar to a test scan) for a DTU scan number."""
    if scan in TEST_SCANS:
        return "test"
    if scan in PRETRAIN_SCANS:
        return "pretrain"
    return "excluded"
