"""Pretrained view mappers by registry name (configs/view_mappers.yaml or $VIEWNETI_VIEW_MAPPER_REGISTRY):
what a name resolves to, and the errors a user meets when it does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.runs import make_train_config

from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.training.checkpoints import list_checkpoints, load_checkpoint_mappers
from viewneti_core.training.trainer import train
from viewneti_core.training.view_mapper_registry import (
    DEFAULT_REGISTRY,
    REGISTRY_ENV,
    load_pretrained_view_mapper,
    read_registry,
    resolve_view_mapper_path,
)


@pytest.fixture
def registry(tmp_path, monkeypatch, pretrained_run) -> Path:
    """A registry in PROJECT/configs/ (relative entries are relative to PROJECT, like the shipped one)."""
    project = tmp_path / "project"
    shutil.copytree(pretrained_run, project / "mappers" / "pre")
    path = project / "configs" / "view_mappers.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({
        "relative": {"path": "mappers/pre", "description": "a copy of the test pretraining run"},
        "absolute": {"path": str(pretrained_run), "description": "the pretraining run itself"},
        "not-there-yet": {"path": "pretrained/not-there-yet", "description": "train it with configs/pretrain_mode3.yaml"},
    }))
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    return project


def test_a_registered_name_resolves_to_the_runs_view_mapper(registry, pretrained_run):
    run = registry / "mappers" / "pre"
    assert resolve_view_mapper_path("relative") == run / "checkpoints" / "checkpoint-6" / "mappers" / "view"
    assert resolve_view_mapper_path("relative", step=3) == run / "checkpoints" / "checkpoint-3" / "mappers" / "view"
    assert resolve_view_mapper_path("absolute") == pretrained_run / "checkpoints" / "checkpoint-6" / "mappers" / "view"
    mapper = load_pretrained_view_mapper("relative", text_width=32, camera_representation="dtu-12d", step=3)
    want = load_checkpoint_mappers(run / "checkpoints" / "checkpoint-3")[VIEW_MAPPER_KEY].state_dict()
    assert mapper.is_view_mapper
    assert all(torch.equal(tensor, want[key]) for key, tensor in mapper.state_dict().items())


def test_training_takes_the_view_mapper_by_name(registry, synthetic_dtu_root, tiny_model_dir, tmp_path):
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path / "runs", 5, "by-name",
                               model={"pretrained_view_mapper": "relative"}, optim={"max_train_steps": 1})
    fitted = load_checkpoint_mappers(train(config, progress=False).final_checkpoint)[VIEW_MAPPER_KEY].state_dict()
    latest = load_checkpoint_mappers(list_checkpoints(registry / "mappers" / "pre")[-1])[VIEW_MAPPER_KEY].state_dict()
    assert all(torch.equal(tensor, latest[key]) for key, tensor in fitted.items())  # mode 5: frozen, as loaded


def test_registered_but_missing_path_says_where_and_how(registry):
    with pytest.raises(FileNotFoundError) as err:
        resolve_view_mapper_path("not-there-yet")
    message = str(err.value)
    assert f"registered at {registry / 'pretrained' / 'not-there-yet'}, which does not exist" in message
    assert "train it with configs/pretrain_mode3.yaml" in message


def test_unknown_name_lists_the_registered_ones(registry):
    with pytest.raises(FileNotFoundError) as err:
        resolve_view_mapper_path("dtu-sd21-typo")
    message = str(err.value)
    assert "'dtu-sd21-typo' is neither an existing path nor a registered name" in message
    assert f"registered in {registry / 'configs' / 'view_mappers.yaml'}: absolute, not-there-yet, relative" in message


def test_the_shipped_registry_entry_explains_how_to_get_the_mapper(monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    entry = read_registry()["dtu-sd21-88scans"]
    assert read_registry() == yaml.safe_load(DEFAULT_REGISTRY.read_text())
    if (DEFAULT_REGISTRY.parents[1] / entry["path"]).exists():
        pytest.skip("the pretrained view mapper is installed in this checkout")
    with pytest.raises(FileNotFoundError, match=r"viewneti train --config configs/pretrain_mode3\.yaml"):
        resolve_view_mapper_path("dtu-sd21-88scans")


def test_a_registry_that_is_not_a_mapping(tmp_path, monkeypatch):
    path = tmp_path / "registry.yaml"
    path.write_text("- dtu-sd21-88scans\n- other\n")
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    with pytest.raises(ValueError, match=r"registry\.yaml must map names to \{path: \.\.\., description: \.\.\.\}"):
        resolve_view_mapper_path("dtu-sd21-88scans")


def test_a_mode_0_run_or_an_object_mapper_is_not_a_view_mapper(image_folder, tiny_model_dir, fitted_run, tmp_path):
    run = train(make_train_config(image_folder, tiny_model_dir, tmp_path, 0, "mode0", optim={"max_train_steps": 1}),
                progress=False)
    with pytest.raises(ValueError, match=r"checkpoint-1 has no view mapper \(was it trained in mode 0\?\)"):
        resolve_view_mapper_path(str(run.run_dir))
    object_stem = list_checkpoints(fitted_run)[-1] / "mappers" / "object-object"
    assert object_stem.with_suffix(".json").is_file()
    with pytest.raises(ValueError, match="is an object mapper, not a view mapper"):
        load_pretrained_view_mapper(str(object_stem), text_width=32, camera_representation="dtu-12d")


def test_a_fit_with_another_caption_than_the_pretraining_one_is_warned(pretrained_run, caplog):
    """The camera code a view mapper learned goes with the caption it was pretrained with (data.view_caption)."""
    spec = str(pretrained_run)
    with caplog.at_level("WARNING", logger="viewneti_core.training.view_mapper_registry"):
        load_pretrained_view_mapper(spec, text_width=32, camera_representation="dtu-12d",
                                    view_caption="{view}. A photo of a {object}")
        assert not caplog.records  # the caption the test pretraining run used
        load_pretrained_view_mapper(spec, text_width=32, camera_representation="dtu-12d", view_caption="{view}. {object}")
    warned = {record.getMessage() for record in caplog.records}  # one warning (a handler may see it twice)
    assert len(warned) == 1
    assert "'{view}. A photo of a {object}'" in caplog.text and "'{view}. {object}'" in caplog.text
