"""Import the original ViewNeTI code's released checkpoints into our run format (safetensors + JSON).

The authors' files (`mapper-steps-N_view.pt`, `mapper-steps-N_object.pt`) are `torch.save` pickles of
`{"cfg": <pyrallis-encoded config>, "mappers": {key: {"state_dict", "encoder", "placeholder_object_token"}}}`
where `encoder` is a pickled module of the original code; they are read with the restricted unpickler
of viewneti_core/training/original_pickle.py, so no pickled code runs.

Two facts of the original decide the conversion (docs/original_checkpoints.md):
- its Fourier matrix is the plain tensor attribute `w` of the pickled encoder, not in the state_dict;
- a view mapper's camera normalisation ranges are not in the file: the original recomputes them from
  the dataset's 64 calibration cameras when it loads a view mapper, so the caller names that dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viewneti_core.atomic_files import temp_dir_beside
from viewneti_core.config import ViewNetiConfig, deep_merge, dump_config, parse_overrides, validate_config
from viewneti_core.data import dtu
from viewneti_core.data.cameras import CameraNormalization
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.method.mappers import MapperConfig, NeTIMapper, save_mapper
from viewneti_core.training.checkpoints import CHECKPOINT_DIR, FORMAT_VERSION, mapper_file_stem
from viewneti_core.training.original_pickle import OriginalCheckpointError, OriginalRecord, read_torch_file

logger = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"^mapper-steps-(\d+)_(view|object)\.pt$")
ARCH_OF_THE_PAPER = 15  # `model.arch_view_net` of the final model (the only one the released files use)
NUM_UNET_LAYERS = 16  # len(constants.UNET_LAYERS) of the original: its layer input is l / 16 * 2 - 1


# ---- one original file ---------------------------------------------------------------------------


@dataclass
class OriginalMapper:
    """One mapper of an original file, as plain tensors and numbers."""

    kind: str  # "object" or "view"
    token: str
    state_dict: dict[str, torch.Tensor]
    fourier: torch.Tensor  # the encoder's `w`, (num_features, 2 [+ 12])
    sigmas: list[float]


@dataclass
class OriginalFile:
    path: Path
    kind: str
    cfg: dict
    mappers: list[OriginalMapper]
    sha256: str
    ignored: list[str] = field(default_factory=list)

    def get(self, dotted: str, default: Any = ...) -> Any:
        """A key of the pyrallis config; `default` stands for the original's default when it is absent."""
        node: Any = self.cfg
        for part in dotted.split("."):
            if isinstance(node, OriginalRecord):
                node = node.attrs
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    raise OriginalCheckpointError(f"{self.path}: its config has no {dotted!r}")
                return default
            node = node[part]
        return node.attrs if isinstance(node, OriginalRecord) else node


STATE_DICT_KEYS = ("net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias",
                   "net.4.weight", "net.4.bias", "output_layer.0.weight", "output_layer.0.bias")
ENCODER_CLASS = "models.positional_encoding.FourierPositionalEncodingNDims"


def read_original_file(path: Path, kind: str | None = None) -> OriginalFile:
    """Read and check one `mapper-steps-N_{view,object}.pt` file (kind from the name unless given)."""
    path = Path(path)
    match = FILE_PATTERN.match(path.name)
    kind = kind or (match.group(2) if match else None)
    data = read_torch_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("cfg"), dict) or not isinstance(data.get("mappers"), dict):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise OriginalCheckpointError(
            f"{path} is not a mapper checkpoint of the original ViewNeTI code: expected a dict with 'cfg' and "
            f"'mappers', found {found}")
    if not data["mappers"]:
        raise OriginalCheckpointError(f"{path} holds no mappers")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entries = list(data["mappers"].values())
    if kind is None:  # the view file stores its single mapper under a dummy token
        kind = "view" if [e.get("placeholder_object_token") for e in entries if isinstance(e, dict)] == ["dummy"] else "object"
    file = OriginalFile(path, kind, data["cfg"], [], digest)
    if "encode_phi" in data:
        file.ignored.append("encode_phi (used only by architectures before arch_view_net 15)")
    _check_config(file)
    if kind == "view" and len(entries) != 1:
        raise OriginalCheckpointError(f"{path}: a view-mapper file holds one mapper, this one holds {len(entries)}")
    for entry in entries:
        file.mappers.append(_read_mapper(file, entry))
    return file


def _check_config(file: OriginalFile) -> None:
    path = file.path
    mode = file.get("learnable_mode", 0)
    if mode not in (0, 2, 3, 4, 5):
        raise OriginalCheckpointError(f"{path}: learnable_mode {mode} cannot be imported (mode 1 was retired; "
                                      "modes 0, 2, 3, 4, 5 are supported)")
    arch = file.get("model.arch_view_net", 0)
    if arch != ARCH_OF_THE_PAPER:
        raise OriginalCheckpointError(
            f"{path}: model.arch_view_net is {arch}; only {ARCH_OF_THE_PAPER}, the paper's final architecture "
            "(Fourier features added across inputs, 2-layer MLP), can be imported")
    if file.get("model.original_ti", False):
        raise OriginalCheckpointError(f"{path}: an original-TI baseline (model.original_ti) has no mapper to import")
    side = file.kind
    if file.get(f"model.bypass_unconstrained_{side}", False):
        raise OriginalCheckpointError(f"{path}: model.bypass_unconstrained_{side} is set; only the norm-matched "
                                      "bypass of the paper is supported")
    if not file.get(f"model.output_bypass_{side}", True):
        raise OriginalCheckpointError(f"{path}: model.output_bypass_{side} is off; the paper's mappers output a bypass")
    if file.get(f"model.target_norm_{side}", None) is None:
        raise OriginalCheckpointError(
            f"{path}: model.target_norm_{side} is not set, so the original did not rescale this mapper's output; "
            "ours always rescales it to the super-category norm")
    representation = file.get("data.camera_representation", "spherical")
    if side == "view" and representation != "dtu-12d":
        raise OriginalCheckpointError(
            f"{path}: the view mapper takes {representation!r} cameras; only 'dtu-12d' (DTU projection matrices) "
            "view mappers can be imported")


def _read_mapper(file: OriginalFile, entry: Any) -> OriginalMapper:
    path = file.path
    if not isinstance(entry, dict) or not {"state_dict", "encoder", "placeholder_object_token"} <= set(entry):
        raise OriginalCheckpointError(
            f"{path}: a mapper entry must hold 'state_dict', 'encoder' and 'placeholder_object_token', found "
            f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
    token = str(entry["placeholder_object_token"])
    state = entry["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OriginalCheckpointError(f"{path}: the state_dict of {token!r} is not a dict of tensors")
    missing = [k for k in STATE_DICT_KEYS if k not in state]
    extra = sorted(set(state) - set(STATE_DICT_KEYS))
    if missing or extra:
        raise OriginalCheckpointError(
            f"{path}: the state_dict of {token!r} does not have the arch-15 layout (missing {missing}, unexpected "
            f"{extra})")
    encoder = entry["encoder"]
    if not isinstance(encoder, OriginalRecord) or encoder.global_name != ENCODER_CLASS:
        found = encoder.global_name if isinstance(encoder, OriginalRecord) else type(encoder).__name__
        raise OriginalCheckpointError(f"{path}: the encoder of {token!r} is {found}, expected {ENCODER_CLASS}")
    attrs = encoder.attrs
    w, sigmas = attrs.get("w"), attrs.get("sigmas")
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not isinstance(sigmas, list | tuple):
        raise OriginalCheckpointError(f"{path}: the encoder of {token!r} has no Fourier matrix `w` and `sigmas`")
    if attrs.get("normalize", False):
        raise OriginalCheckpointError(f"{path}: the encoder of {token!r} normalises its features (not the paper's)")
    n_inputs = 2 + (12 if file.kind == "view" else 0)
    if w.shape[1] != n_inputs or len(sigmas) != n_inputs:
        what = "(t, l) + a 12-d DTU camera" if file.kind == "view" else "(t, l)"
        raise OriginalCheckpointError(
            f"{path}: the {file.kind} mapper's Fourier matrix takes {w.shape[1]} inputs ({len(sigmas)} sigmas), "
            f"expected {n_inputs}: {what}; camera representation mismatch")
    hidden, width = state["net.0.weight"].shape
    if width != 2 * w.shape[0]:
        raise OriginalCheckpointError(f"{path}: net.0 takes {width} features but the encoder makes {2 * w.shape[0]}")
    out = state["output_layer.0.weight"].shape
    text_width = file.get("model.word_embedding_dim", 768)
    if out != (2 * text_width, hidden):
        raise OriginalCheckpointError(
            f"{path}: output_layer.0 of {token!r} outputs {out[0]} numbers, but model.word_embedding_dim is "
            f"{text_width} (word embedding + bypass = {2 * text_width}): text width mismatch")
    tensors = [w, *state.values()]
    if not all(torch.isfinite(t.float()).all() for t in tensors):
        raise OriginalCheckpointError(f"{path}: the weights of {token!r} contain non-finite values")
    return OriginalMapper(file.kind, token, {k: v.float() for k, v in state.items()}, w.float(),
                          [float(s) for s in sigmas])


# ---- conversion ---------------------------------------------------------------------------------


def convert_mapper(file: OriginalFile, mapper: OriginalMapper, *, token: str, super_category: str,
                   camera: CameraNormalization | None) -> NeTIMapper:
    """Our mapper computing what the original's arch-15 mapper computes (same W, weights and norms)."""
    sigma_t, sigma_l, *camera_sigmas = mapper.sigmas
    if len(set(camera_sigmas)) > 1:
        raise OriginalCheckpointError(f"{file.path}: the camera inputs have different Fourier sigmas {camera_sigmas}")
    regenerated = torch.randn(mapper.fourier.shape, generator=torch.Generator().manual_seed(0)) * torch.tensor(mapper.sigmas)
    config = MapperConfig(
        kind=mapper.kind,
        output_dim=int(file.get("model.word_embedding_dim", 768)),
        target_norm=float(file.get(f"model.target_norm_{mapper.kind}")),
        sigma_t=sigma_t,
        sigma_l=sigma_l,
        sigma_camera=camera_sigmas[0] if camera_sigmas else 0.5,
        hidden_dim=int(mapper.state_dict["net.0.weight"].shape[0]),
        num_fourier_features=int(mapper.fourier.shape[0]),
        num_unet_layers=NUM_UNET_LAYERS,
        camera_normalization=camera.to_dict() if camera is not None else None,
        token=token,
        super_category_token=super_category,
        extra={
            "imported_from": str(file.path), "sha256": file.sha256, "original_token": mapper.token,
            # The original rebuilds W from torch seed 0 when it loads a mapper; the stored W is used here.
            "fourier_matches_seed0_regeneration": bool(torch.allclose(regenerated, mapper.fourier, rtol=0, atol=1e-6)),
        },
    )
    ours = NeTIMapper(config)
    state = {
        "fourier.weight": mapper.fourier,
        "target_norm": torch.tensor(config.target_norm),
        **{k: v for k, v in mapper.state_dict.items() if k.startswith("net.")},
        "net.6.weight": mapper.state_dict["output_layer.0.weight"],
        "net.6.bias": mapper.state_dict["output_layer.0.bias"],
    }
    if camera is not None:
        state["camera_min"] = torch.tensor(camera.minimum, dtype=torch.float32)
        state["camera_max"] = torch.tensor(camera.maximum, dtype=torch.float32)
    ours.load_state_dict(state, strict=True)
    if not config.extra["fourier_matches_seed0_regeneration"]:
        logger.warning("%s: the stored Fourier matrix differs from the seed-0 matrix the original rebuilds on load; "
                       "using the stored one (the one the mapper was trained with)", file.path)
    return ours


def calibration_normalization(dtu_root: Path | None, calibration: Path | None) -> tuple[CameraNormalization, str]:
    """Ranges over the 64 DTU calibration cameras, as the original computes them when loading a view mapper."""
    if dtu_root is not None:
        from viewneti_core.data.datasets import dtu_camera_normalization

        return dtu_camera_normalization(dtu_root, "dtu-12d"), str(Path(dtu_root) / "Calibration" / "cal18")
    assert calibration is not None
    folder = Path(calibration)
    if (folder / "Calibration" / "cal18").is_dir():
        folder = folder / "Calibration" / "cal18"
    mats = []
    for cam in range(dtu.NUM_CAMERAS):
        file = folder / Path(dtu.camera_relpath(cam)).name
        if not file.is_file():
            raise FileNotFoundError(f"missing calibration file {file}: --calibration needs the 64 files "
                                    f"pos_001.txt .. pos_{dtu.NUM_CAMERAS:03d}.txt of DTU's Calibration/cal18")
        mats.append(dtu.parse_projection_matrix(file.read_text(), source=str(file)))
    dtu.check_distinct_cameras(mats, [folder / Path(dtu.camera_relpath(cam)).name for cam in range(dtu.NUM_CAMERAS)])
    return CameraNormalization.from_cameras(np.stack(mats).reshape(-1, 12), "dtu-12d"), str(folder)


def find_original_files(checkpoint: Path, step: int | None) -> dict[int, dict[str, Path]]:
    """{step: {"view": file, "object": file}} of a run directory, or the one file given."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        match = FILE_PATTERN.match(checkpoint.name)
        if match is None and step is None:
            raise OriginalCheckpointError(f"cannot tell the step from the file name {checkpoint.name}: pass --step")
        if match is not None and step is not None and int(match.group(1)) != step:
            raise OriginalCheckpointError(f"{checkpoint} is step {match.group(1)}, not --step {step}")
        return {step if step is not None else int(match.group(1)): {match.group(2) if match else "": checkpoint}}
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} does not exist")
    found: dict[int, dict[str, Path]] = {}
    for path in sorted(checkpoint.iterdir()):
        if (m := FILE_PATTERN.match(path.name)) and path.is_file():
            found.setdefault(int(m.group(1)), {})[m.group(2)] = path
    if not found:
        raise OriginalCheckpointError(f"{checkpoint} holds no mapper-steps-N_view.pt / mapper-steps-N_object.pt files")
    if step is not None:
        if step not in found:
            raise OriginalCheckpointError(f"{checkpoint} has no files for step {step}; steps found: {sorted(found)}")
        found = {step: found[step]}
    return found


def _base_model_text_width(name: str) -> int | None:
    """The text encoder width of a base model if its config is at hand (local dir, builtin, HF cache)."""
    from viewneti_core.base_model import sd_models

    if name.startswith(sd_models.BUILTIN_PREFIX):
        builder = name.removeprefix(sd_models.BUILTIN_PREFIX)
        configs = sd_models.tiny_configs() if builder == "tiny" else sd_models.sd21_configs() if builder == "sd21-random" else None
        return int(configs["text_encoder"]["hidden_size"]) if configs else None
    local = Path(name).expanduser() / "text_encoder" / "config.json"
    if not local.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "text_encoder/config.json")
        except Exception:  # noqa: BLE001 - not a hub id either: nothing to check against
            return None
        if not isinstance(cached, str):
            return None
        local = Path(cached)
    return int(json.loads(local.read_text())["hidden_size"])


@dataclass
class ImportResult:
    out_dir: Path
    steps: list[int]
    learnable_mode: int
    tokens: list[str]
    base_model: str
    notes: list[str]


def import_original(
    checkpoint: Path,
    out: Path,
    *,
    dtu_root: Path | None = None,
    calibration: Path | None = None,
    step: int | None = None,
    base_model: str | None = None,
    overrides: Sequence[str] | dict = (),
) -> ImportResult:
    """Convert an original run directory (or one file) into a run directory of ours, atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose a new --out directory")
    if dtu_root is not None and calibration is not None:
        raise ValueError("give either --dtu-root or --calibration, not both")
    files: dict[int, dict[str, OriginalFile]] = {}
    for s, entry in find_original_files(checkpoint, step).items():
        files[s] = {}
        for kind, path in entry.items():
            file = read_original_file(path, kind or None)  # a file without the usual name: kind from its content
            files[s][file.kind] = file
    first = next(iter(next(iter(files.values())).values()))
    mode = int(first.get("learnable_mode", 0))
    base = base_model or str(first.get("model.pretrained_model_name_or_path", "CompVis/stable-diffusion-v1-4"))
    if Path(base).expanduser().exists():  # a local copy: recorded absolute, so the run works from anywhere
        base = str(Path(base).expanduser().absolute())
    dtu_root = Path(dtu_root).absolute() if dtu_root is not None else None
    _check_consistent(files, mode, dtu_root)
    text_width = int(first.get("model.word_embedding_dim", 768))
    known_width = _base_model_text_width(base)
    if known_width is not None and known_width != text_width:
        raise OriginalCheckpointError(
            f"{first.path}: the mappers output {text_width}-dim embeddings but the base model {base!r} has a "
            f"{known_width}-dim text encoder: text width mismatch (pass --model with the base model they were "
            "trained on)")
    notes = sorted({n for entry in files.values() for f in entry.values() for n in f.ignored})
    if known_width is None:
        notes.append(f"the text width was not checked: {base!r} is not available here (it is checked when loading)")
    camera = source = None
    if any("view" in entry for entry in files.values()):
        if dtu_root is None and calibration is None:
            raise OriginalCheckpointError(
                "a view mapper needs --dtu-root or --calibration: the original recomputes its camera normalisation "
                "from DTU's 64 calibration cameras (Calibration/cal18) when it loads one; the file does not hold it")
        camera, source = calibration_normalization(dtu_root, calibration)
    reference = next((e["object"] for e in files.values() if "object" in e), first)
    config = _our_config(reference, files, mode, base, dtu_root, out, overrides)
    # Everything is converted in memory first, so a bad file stops the import before anything is written.
    checkpoints = {s: _convert_step(s, entry, config, camera, source, base, text_width) for s, entry in files.items()}
    tmp = temp_dir_beside(out)
    try:
        for s, (mappers, meta) in sorted(checkpoints.items()):
            directory = tmp / CHECKPOINT_DIR / f"checkpoint-{s}"
            (directory / "mappers").mkdir(parents=True)
            for key, mapper in mappers.items():
                save_mapper(mapper, directory / meta["mappers"][key])
            (directory / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "config.yaml").write_text(dump_config(config))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tokens = list(checkpoints[max(checkpoints)][1]["object_tokens"])
    return ImportResult(out, sorted(files), mode, tokens, base, notes)


def _check_consistent(files: dict[int, dict[str, OriginalFile]], mode: int, dtu_root: Path | None) -> None:
    every = [f for entry in files.values() for f in entry.values()]
    first = every[0]
    for f in every[1:]:
        for key in ("learnable_mode", "model.word_embedding_dim", "model.pretrained_model_name_or_path"):
            if f.get(key, None) != first.get(key, None):
                raise OriginalCheckpointError(
                    f"{f.path}: {key} is {f.get(key, None)!r} but {first.path} has {first.get(key, None)!r}: these files "
                    "do not belong to one run" + (" (text width mismatch)" if key == "model.word_embedding_dim" else ""))
    for s, entry in files.items():
        if mode == 0 and "view" in entry:
            raise OriginalCheckpointError(f"{entry['view'].path}: a mode-0 run has no view mapper")
        if mode != 0 and "view" not in entry:
            raise OriginalCheckpointError(
                f"{entry['object'].path}: step {s} has no mapper-steps-{s}_view.pt next to it; an object mapper of "
                f"mode {mode} renders nothing without its view mapper (pass the run directory)")
    if mode in (2, 4, 5) and any("object" not in entry for entry in files.values()):
        view = next(e["view"].path for e in files.values() if "object" not in e)
        raise OriginalCheckpointError(f"{view}: a mode-{mode} run needs its mapper-steps-N_object.pt file as well")
    has_objects = any("object" in entry for entry in files.values())
    if has_objects and mode != 0 and dtu_root is None:
        raise OriginalCheckpointError(
            "importing a run with object mappers needs --dtu-root (the DTU tree `viewneti infer` renders and grades "
            "against); --calibration is enough for a view mapper alone")


def _scan_number(text: str) -> int | None:
    match = re.search(r"scan(\d+)", text)
    return int(match.group(1)) if match else None


def _our_config(ref: OriginalFile, files: dict, mode: int, base: str, dtu_root: Path | None, out: Path,
                overrides: Sequence[str] | dict) -> ViewNetiConfig:
    """Our config with the original's values where the two share a meaning."""
    view = next((e["view"] for e in files.values() if "view" in e), None)
    mapper = ref.mappers[0]
    data: dict[str, Any] = {
        "train_data_dir": str(dtu_root) if dtu_root is not None else None,
        "dtu_lighting": int(ref.get("data.dtu_lighting", 3)),
        "camera_representation": "dtu-12d",
        "super_category_view_token": str(ref.get("data.super_category_view_token", "view")),
        "super_category_object_token": str(ref.get("data.super_category_object_token", "object")),
        "placeholder_object_token": str(ref.get("data.placeholder_object_token", "<object>")),
    }
    if mode != 3:
        data["dtu_subset"] = int(ref.get("data.dtu_subset", -2))
    augmentation = {7: "fitting", 5: "pretraining", 0: "none"}.get(ref.get("data.augmentation_key", 0))
    if augmentation:
        data["augmentation"] = augmentation
    if mode in (2, 4, 5):
        scan = _scan_number(Path(str(ref.get("data.train_data_dir", ""))).name) or _scan_number(ref.path.parent.name)
        if scan is None:
            raise OriginalCheckpointError(f"{ref.path}: cannot tell the DTU scan from data.train_data_dir "
                                          f"{ref.get('data.train_data_dir', None)!r} or the run folder name")
        data["dtu_scan"] = scan
    if mode == 3:
        scans = [_scan_number(str(s)) for s in ref.get("data.train_data_subsets", None) or []]
        if scans and None not in scans:
            data["dtu_pretrain_scans"] = scans
    sigma_camera = view.mappers[0].sigmas[2] if view is not None else 0.5
    model = {
        "pretrained_model_name_or_path": base,
        "mapper_hidden_dim": int(mapper.state_dict["net.0.weight"].shape[0]),
        "num_fourier_features": int(mapper.fourier.shape[0]),
        "pe_sigmas": {"sigma_t": mapper.sigmas[0], "sigma_l": mapper.sigmas[1], "sigma_camera": sigma_camera},
        "output_bypass": True,
        # The original's load_mapper gives a loaded view mapper the *object* alpha of its file's config.
        "output_bypass_alpha_view": float(view.get("model.output_bypass_alpha_object", 0.2)) if view else 5.0,
        "output_bypass_alpha_object": float(ref.get("model.output_bypass_alpha_object", 0.2)),
    }
    raw = {
        "learnable_mode": mode,
        "log": {"exp_dir": str(out.parent), "exp_name": out.name},
        "data": data,
        "model": model,
        "eval": {"num_denoising_steps": int(ref.get("eval.num_denoising_steps", 30))},
        "optim": {
            "max_train_steps": int(ref.get("optim.max_train_steps", 1000)),
            "learning_rate": float(ref.get("optim.learning_rate", 1e-3)),
            "train_batch_size": int(ref.get("optim.train_batch_size", 3)),
            "gradient_accumulation_steps": int(ref.get("optim.gradient_accumulation_steps", 3)),
            "mixed_precision": str(ref.get("optim.mixed_precision", "no")),
            "allow_tf32": bool(ref.get("optim.allow_tf32", False)),
        },
    }
    tree = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return validate_config(deep_merge(raw, tree))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, OriginalRecord):
        return {"record_of": value.global_name, **_json_safe(value.attrs)}
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"<tensor {tuple(value.shape)}>"
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def _convert_step(step: int, entry: dict[str, OriginalFile], config: ViewNetiConfig,
                  camera: CameraNormalization | None, camera_source: str | None, base: str,
                  text_width: int) -> tuple[dict[str, NeTIMapper], dict]:
    """Our mappers of one step and the `checkpoint.json` of viewneti_core/training/checkpoints.py (no training state)."""
    mappers: dict[str, NeTIMapper] = {}
    stems: dict[str, str] = {}
    data = config.data
    for kind, file in sorted(entry.items(), key=lambda kv: kv[0] != "view"):
        for original in file.mappers:
            if kind == "view":
                key, token, category = VIEW_MAPPER_KEY, data.placeholder_view_token, data.super_category_view_token
            else:
                key = token = original.token
                category = data.super_category_object_token
            if key in mappers:
                raise OriginalCheckpointError(f"{file.path}: the token {key!r} occurs twice")
            mapper = convert_mapper(file, original, token=token, super_category=category,
                                    camera=camera if kind == "view" else None)
            if kind == "view":
                mapper.config.extra["camera_normalization_source"] = camera_source
            mappers[key] = mapper
            stems[key] = f"mappers/{mapper_file_stem(key)}"
    tokens = [k for k in stems if k != VIEW_MAPPER_KEY]
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "mappers": stems,
        "learnable_mode": config.learnable_mode,
        "base_model": base,
        "text_width": text_width,
        "num_unet_layers": NUM_UNET_LAYERS,
        "weights": "pretrained",
        "view_token": data.placeholder_view_token,
        "object_tokens": tokens,
        "camera_representation": data.camera_representation,
        "output_bypass": config.model.output_bypass,
        "output_bypass_alpha_view": config.model.output_bypass_alpha_view,
        "output_bypass_alpha_object": config.model.output_bypass_alpha_object,
        "config": json.loads(json.dumps(config.model_dump(mode="json"))),
        "imported_from": {
            "files": {kind: {"path": str(f.path), "sha256": f.sha256} for kind, f in entry.items()},
            "camera_normalization_source": camera_source,
            "original_config": _json_safe(next(iter(entry.values())).cfg),
        },
    }
    return mappers, meta
