"""Find a pretrained view mapper (modes 4 and 5) by path or by name in `configs/view_mappers.yaml`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from viewneti_core.data.captions import VIEW_CAPTION
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.method.mappers import NeTIMapper, load_mapper
from viewneti_core.safe_io import read_yaml_file
from viewneti_core.training.checkpoints import list_checkpoints, read_checkpoint_info, resolve_checkpoint

REGISTRY_ENV = "VIEWNETI_VIEW_MAPPER_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "configs" / "view_mappers.yaml"

logger = logging.getLogger(__name__)


def registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY))


def read_registry(path: Path | None = None) -> dict[str, dict]:
    path = path or registry_path()
    if not path.is_file():
        return {}
    data = read_yaml_file(path, "view-mapper registry") or {}  # size, nesting and alias bounds
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map names to {{path: ..., description: ...}} entries")
    return data


def resolve_view_mapper_path(spec: str, step: int | None = None) -> Path:
    """A registry name, a run directory, a checkpoint directory or a mapper file -> mapper file stem."""
    registry = read_registry()
    if spec in registry:
        entry = registry[spec]
        path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else registry_path().parent.parent / entry["path"]
        if not path.exists():
            raise FileNotFoundError(
                f"view mapper {spec!r} is registered at {path}, which does not exist: "
                f"{entry.get('description', 'place the pretrained checkpoint there')}"
            )
    else:
        path = Path(spec)
        if not path.exists() and not path.with_suffix(".json").exists():
            names = ", ".join(sorted(registry)) or "(none registered)"
            raise FileNotFoundError(
                f"pretrained view mapper {spec!r} is neither an existing path nor a registered name "
                f"(registered in {registry_path()}: {names})"
            )
    if path.is_dir() and list_checkpoints(path):  # a run directory
        path = resolve_checkpoint(path, "latest" if step is None else step)
    if path.is_dir() and (path / "checkpoint.json").is_file():
        mappers = read_checkpoint_info(path)["mappers"]
        if VIEW_MAPPER_KEY not in mappers:
            raise ValueError(f"checkpoint {path} has no view mapper (was it trained in mode 0?)")
        return path / mappers[VIEW_MAPPER_KEY]
    return path.with_suffix("")


def load_pretrained_view_mapper(
    spec: str, *, text_width: int, camera_representation: str, step: int | None = None,
    view_caption: str | None = None,
) -> NeTIMapper:
    """Load and check compatibility with the base model and the data's camera representation; warn when
    `view_caption` (the fit's `data.view_caption`) is not the caption the mapper was pretrained with."""
    stem = resolve_view_mapper_path(spec, step)
    try:
        mapper = load_mapper(stem)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{stem} is not a usable view mapper: {exc}") from exc
    if not mapper.is_view_mapper:
        raise ValueError(f"{stem} is an object mapper, not a view mapper")
    if mapper.config.output_dim != text_width:
        raise ValueError(
            f"pretrained view mapper {stem} outputs {mapper.config.output_dim}-dim embeddings, but the base "
            f"model's text encoder is {text_width}-dim: it was trained for another base model"
        )
    representation = mapper.config.camera.representation
    if representation != camera_representation:
        raise ValueError(
            f"pretrained view mapper {stem} takes {representation} cameras, but data.camera_representation is "
            f"{camera_representation}"
        )
    if view_caption is not None and view_caption != (pretrained_with := pretraining_caption(stem)):
        logger.warning("pretrained view mapper %s was trained with the caption %r, this run uses %r "
                       "(data.view_caption): its camera code may not carry over to the new caption",
                       stem, pretrained_with, view_caption)
    return mapper


def pretraining_caption(mapper_stem: Path) -> str:
    """The caption (`data.view_caption`) a view mapper was pretrained with, from the checkpoint.json beside
    its mappers/ folder; mappers without one (imported, or older than the setting) used the original's."""
    info_file = Path(mapper_stem).parent.parent / "checkpoint.json"
    if not info_file.is_file():
        return VIEW_CAPTION
    saved = read_checkpoint_info(info_file.parent).get("config") or {}
    return (saved.get("data") or {}).get("view_caption", VIEW_CAPTION)
