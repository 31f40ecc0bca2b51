"""Importing the original ViewNeTI code's checkpoints (viewneti_core/training/original_checkpoints.py).

The files are built here with the original's structure: its classes are registered under their
original module paths so `torch.save` pickles them under those global names, the mapper state_dict
has the arch-15 key names (`net.*`, `output_layer.*`), the encoder keeps its Fourier matrix as the
plain attribute `w`, and the config is a pyrallis-style dict. The converted mappers are compared
with an independent statement of the original's forward pass.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures.runs import make_train_config
from torch import nn

from viewneti_cli.viewneti import main as cli_main
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data.dtu import load_cameras as cams_of
from viewneti_core.inference import read_predictions, run_generate
from viewneti_core.training.checkpoints import load_checkpoint_mappers, read_checkpoint_info
from viewneti_core.training.original_checkpoints import OriginalCheckpointError, import_original
from viewneti_core.training.trainer import train
from viewneti_core.training.view_mapper_registry import (
    DEFAULT_REGISTRY,
    REGISTRY_ENV,
    load_pretrained_view_mapper,
    read_registry,
    resolve_view_mapper_path,
)

TEXT_WIDTH = 32  # the tiny model's text encoder
VIEW_SIGMAS = [0.03, 2.0] + [0.5] * 12  # sigma_t, sigma_l, 12 x sigma_dtu12 (pe_sigma_exp_key 2)
OBJECT_SIGMAS = [0.03, 2.0]
RUN_NAME = "20230805_scan114_subs_1_m5_alpha5_augs7_pretrainkey8"


# ---- the original's classes, under their original global names ----------------------------------


class FourierPositionalEncodingNDims(nn.Module):
    """As models/positional_encoding.py: seeded global RNG, column i scaled by sigma_i, `w` a plain tensor."""

    def __init__(self, sigmas, dim=128, normalize=False, seed=0):
        super().__init__()
        self.sigmas = sigmas
        self.dim = dim
        torch.manual_seed(seed)
        w = torch.randn((dim // 2, len(sigmas)))
        for i in range(len(sigmas)):
            w[:, i] *= sigmas[i]
        self.w = nn.Parameter(w).clone()  # stands in for the original's `nn.Parameter(w).cuda()`: not a Parameter
        self.normalize = normalize


class NeTIMapper(nn.Module):
    """The arch-15 layout of models/neti_mapper.py: encoder, `net` (2 hidden layers), `output_layer`."""

    def __init__(self, sigmas, output_dim, h_dim=64, seed=0):
        super().__init__()
        self.encoder = FourierPositionalEncodingNDims(dim=64, sigmas=sigmas, seed=0)  # reseeds the global RNG
        self.net = nn.Sequential(nn.Linear(64, h_dim), nn.LayerNorm(h_dim), nn.LeakyReLU(),
                                 nn.Linear(h_dim, h_dim), nn.LayerNorm(h_dim), nn.LeakyReLU())
        self.output_layer = nn.Sequential(nn.Linear(h_dim, 2 * output_dim))
        generator = torch.Generator().manual_seed(seed)  # "trained" weights: distinct per seed, LayerNorms
        with torch.no_grad():  # away from their (1, 0) init so that a swapped key would show
            for p in self.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=generator))


CLASSES = {"models.positional_encoding": [FourierPositionalEncodingNDims], "models.neti_mapper": [NeTIMapper]}


@contextmanager
def original_modules():
    """Register the classes under the original's module paths while files are written."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "models", types.ModuleType("models"))
        for name, classes in CLASSES.items():
            module = types.ModuleType(name)
            for cls in classes:
                mp.setattr(cls, "__module__", name)
                setattr(module, cls.__name__, cls)
            mp.setitem(sys.modules, name, module)
        yield


def original_cfg(mode=5, width=TEXT_WIDTH, base="stabilityai/stable-diffusion-2-1", **model):
    """A pyrallis-encoded RunConfig of the original (plain dicts; PESigmas encoded as a dict)."""
    return {
        "learnable_mode": mode, "debug": False, "seed": 0,
        "log": {"exp_name": "train", "overwrite_ok": False, "exp_dir": f"results/{RUN_NAME}", "save_steps": 1500,
                "logging_dir": "logs", "report_to": "tensorboard", "checkpoints_total_limit": None},
        "data": {"train_data_dir": "data/dtu/Rectified/scan114" if mode != 3 else "data/dtu/Rectified",
                 "train_data_subsets": ["scan2", "scan21"] if mode == 3 else None,
                 "placeholder_object_token": "<object>", "super_category_object_token": "object",
                 "super_category_view_token": "view", "placeholder_object_tokens": None,
                 "dataloader_num_workers": 0, "repeats": 100, "camera_representation": "dtu-12d",
                 "dtu_lighting": 3, "dtu_subset": 1 if mode != 3 else 0, "augmentation_key": 7 if mode != 3 else 5},
        "model": {"pretrained_model_name_or_path": base, "pretrained_view_mapper": "results/mapper-steps-50000_view.pt",
                  "pretrained_view_mapper_key": 8, "word_embedding_dim": width, "arch_mlp_hidden_dims": 64,
                  "use_nested_dropout": False, "normalize_object_mapper_output": True,
                  "normalize_view_mapper_output": True, "target_norm_object": 0.4137, "target_norm_view": 0.3791,
                  "use_positional_encoding_object": True, "use_positional_encoding_view": True,
                  "pe_sigmas": {"sigma_t": 0.03, "sigma_l": 2.0, "sigma_theta": 2.0, "sigma_phi": 2.0,
                                "sigma_r": 2.0, "sigma_dtu12": 0.5},
                  "pe_sigma_exp_key": 2, "num_pe_time_anchors": 10, "output_bypass_object": True,
                  "output_bypass_view": True, "arch_view_net": 15, "arch_view_mix_streams": 0,
                  "arch_view_disable_tl": False, "original_ti": False, "bypass_unconstrained_object": False,
                  "bypass_unconstrained_view": False, "output_bypass_alpha_view": 5, "output_bypass_alpha_object": 5,
                  **model},
        "eval": {"validation_steps": 1500, "num_denoising_steps": 30, "validation_seeds": [0, 1]},
        "optim": {"max_train_steps": 3000, "learning_rate": 1e-3, "train_batch_size": 3,
                  "gradient_accumulation_steps": 3, "mixed_precision": "no", "allow_tf32": False},
    }


def save_original(path: Path, cfg: dict, mappers: dict, on_cuda: bool = True, **extra) -> Path:
    """As CheckpointHandler.save_mapper: {"cfg", "mappers": {key: {state_dict, encoder, token}}}."""
    with original_modules():
        payload = {"cfg": cfg, "mappers": {key: {"state_dict": m.state_dict(), "encoder": m.encoder,
                                                 "placeholder_object_token": token}
                                           for key, (m, token) in mappers.items()}} | extra
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
    if on_cuda:
        saved_on_cuda(path)
    return path


def saved_on_cuda(path: Path) -> None:
    """Rewrite the storages' location to 'cuda:0', as in the released files (saved from a GPU)."""
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in items:
            if info.filename.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            z.writestr(info, data)


def make_mappers(seed: int, width: int = TEXT_WIDTH, view_sigmas=VIEW_SIGMAS):
    with torch.random.fork_rng():
        return NeTIMapper(view_sigmas, width, seed=seed), NeTIMapper(OBJECT_SIGMAS, width, seed=seed + 1)


def write_mode5_run(folder: Path, base: str, width: int = TEXT_WIDTH, steps=(1500, 3000), **cfg_model) -> dict:
    """A per-scan mode-5 run folder as released: one view and one object file per saved step."""
    cfg = original_cfg(5, width, base, **cfg_model)
    made = {}
    view, _ = make_mappers(100, width)  # mode 5: the frozen pretrained view mapper, the same at every step
    for i, step in enumerate(steps):
        _, obj = make_mappers(200 + i, width)
        # The object file's keys are token ids in the original; the view file's key is 'dummy_key'.
        save_original(folder / f"mapper-steps-{step}_object.pt", cfg, {49409: (obj, "<object>")})
        save_original(folder / f"mapper-steps-{step}_view.pt", cfg, {"dummy_key": (view, "dummy")})
        made[step] = {"view": view, "object": obj}
    return made


# ---- an independent statement of the original's computation --------------------------------------


def original_camera_ranges(calibration: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """As dtu_generate_dset_cam_tokens_params + _prepare_view_token_param_lookup: min/max over all cameras."""
    cams = []
    for f in sorted(calibration.glob("pos_*.txt")):
        cams.append(torch.tensor([[float(n) for n in line.strip().split()] for line in f.read_text().splitlines()]))
    all_cams = torch.stack(cams)
    return all_cams.min(0).values.flatten(), all_cams.max(0).values.flatten()


def original_forward(mapper: NeTIMapper, norm_scale, t, layer, cams=None, cam_min=None, cam_max=None):
    """do_positional_encoding -> net -> output_layer -> bypass split -> norm rescale (arch 15, eval mode)."""
    sd = mapper.state_dict()
    w = mapper.encoder.w.detach()
    data = torch.stack((t / 1000 * 2 - 1, layer / 16 * 2 - 1), dim=1)
    if cams is not None:
        data = torch.cat((data, (cams - cam_min) / (cam_max - cam_min) * 2 - 1), dim=1)
    x = data.T
    v = torch.cat([torch.sin(w @ x), torch.cos(w @ x)]).T
    h = F.linear(v, sd["net.0.weight"], sd["net.0.bias"])
    h = F.leaky_relu(F.layer_norm(h, (h.shape[1],), sd["net.1.weight"], sd["net.1.bias"]), 0.01)
    h = F.linear(h, sd["net.3.weight"], sd["net.3.bias"])
    h = F.leaky_relu(F.layer_norm(h, (h.shape[1],), sd["net.4.weight"], sd["net.4.bias"]), 0.01)
    out = F.linear(h, sd["output_layer.0.weight"], sd["output_layer.0.bias"])
    dim = out.shape[1] // 2
    word, bypass = out[:, :dim], out[:, dim:]
    return F.normalize(word, dim=-1) * norm_scale, bypass


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("released") / RUN_NAME
    return folder, write_mode5_run(folder, base=str(tiny_model_dir))


@pytest.fixture(scope="module")
def imported_run(released_run, synthetic_dtu_root, tmp_path_factory):
    folder, _ = released_run
    out = tmp_path_factory.mktemp("imported") / "scan114-1view"
    result = import_original(folder, out, dtu_root=synthetic_dtu_root)
    return out, result


@pytest.fixture(scope="module")
def released_view_mapper(tmp_path_factory, tiny_model_dir):
    """A mode-3 pretraining's view file alone, like the released 88-scene mapper (key 8)."""
    cfg = original_cfg(3, TEXT_WIDTH, str(tiny_model_dir), output_bypass_alpha_view=3)
    view, _ = make_mappers(300)
    path = save_original(tmp_path_factory.mktemp("released88") / "mapper-steps-50000_view.pt", cfg,
                         {"dummy_key": (view, "dummy")})
    return path, view


def nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir())


# ---- conversion fidelity -------------------------------------------------------------------------


def test_converted_mappers_compute_what_the_original_computed(released_run, imported_run, synthetic_dtu_root):
    folder, made = released_run
    out, result = imported_run
    assert result.steps == [1500, 3000] and result.learnable_mode == 5 and result.tokens == ["<object>"]
    calibration = synthetic_dtu_root / "Calibration" / "cal18"
    cam_min, cam_max = original_camera_ranges(calibration)
    cams = torch.stack([torch.tensor([[float(n) for n in line.split()] for line in f.read_text().splitlines()]).flatten()
                        for f in sorted(calibration.glob("pos_*.txt"))])  # all 64 calibration cameras, raw 12-d
    generator = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (len(cams),), generator=generator).float()
    layer = torch.randint(0, 16, (len(cams),), generator=generator).float()
    for step in (1500, 3000):
        ours = load_checkpoint_mappers(out / "checkpoints" / f"checkpoint-{step}")
        assert set(ours) == {"view", "<object>"}
        view, obj = made[step]["view"], made[step]["object"]
        assert torch.equal(ours["view"].fourier.weight, view.encoder.w.detach())
        assert torch.equal(ours["view"].camera_min, cam_min) and torch.equal(ours["view"].camera_max, cam_max)
        with torch.no_grad():
            got = ours["view"](t, layer, cams)
            want = original_forward(view, 0.3791, t, layer, cams, cam_min, cam_max)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
            got = ours["<object>"](t, layer)
            want = original_forward(obj, 0.4137, t, layer)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        assert ours["view"].config.extra["fourier_matches_seed0_regeneration"] is True
    # Step 3000's object mapper is another one: the steps were not mixed up.
    assert not torch.equal(made[1500]["object"].net[0].weight, made[3000]["object"].net[0].weight)


def test_the_imported_run_records_what_using_it_needs(imported_run, synthetic_dtu_root, tiny_model_dir):
    out, _ = imported_run
    info = read_checkpoint_info(out / "checkpoints" / "checkpoint-1500")
    assert info["base_model"] == str(tiny_model_dir) and info["text_width"] == TEXT_WIDTH
    assert info["learnable_mode"] == 5 and info["object_tokens"] == ["<object>"] and info["num_unet_layers"] == 16
    assert info["output_bypass_alpha_view"] == 5.0 and info["output_bypass_alpha_object"] == 5.0
    assert info["config"]["data"]["dtu_scan"] == 114 and info["config"]["data"]["dtu_subset"] == 1
    assert info["config"]["data"]["train_data_dir"] == str(synthetic_dtu_root)
    assert info["config"]["model"]["pe_sigmas"] == {"sigma_t": 0.03, "sigma_l": 2.0, "sigma_camera": 0.5}
    assert info["imported_from"]["original_config"]["model"]["pretrained_view_mapper_key"] == 8
    view_meta = json.loads((out / "checkpoints" / "checkpoint-1500" / "mappers" / "view.json").read_text())
    assert view_meta["camera_normalization"]["representation"] == "dtu-12d"
    assert view_meta["target_norm"] == pytest.approx(0.3791) and view_meta["output_dim"] == TEXT_WIDTH
    # Our artifacts hold no pickle: safetensors, JSON and the YAML config only.
    assert {p.suffix for p in out.rglob("*") if p.is_file()} == {".safetensors", ".json", ".yaml"}


def test_infer_renders_an_imported_mode5_run(released_run, synthetic_dtu_root, tmp_path):
    folder, _ = released_run
    out = tmp_path / "run"
    rc = cli_main(["import-original", "--checkpoint", str(folder), "--out", str(out), "--dtu-root",
                   str(synthetic_dtu_root), "--eval.width", "64", "--eval.height", "48",
                   "--eval.num_denoising_steps", "2", "--run.device", "cpu"])
    assert rc == 0
    rc = cli_main(["infer", "--run-dir", str(out), "--step", "1500", "--views", "25,1", "--seeds", "0"])
    assert rc == 0
    meta, images = read_predictions(out / "inference" / "step-1500")
    assert sorted(images) == [(0, 1), (0, 25)] and images[(0, 25)].shape == (3, 48, 64)
    assert meta["scan"] == 114 and meta["n_views"] == 1 and meta["train_cams"] == [25] and meta["step"] == 1500
    # ... and on through the metrics and the summary, as the README's "from released checkpoints" commands.
    predictions = out / "inference" / "step-1500"
    assert cli_main(["evaluate", "--predictions", str(predictions), "--lpips", "none"]) == 0
    assert cli_main(["summarize", "--tables", str(predictions / "metrics.parquet"), "--out", str(tmp_path / "sum")]) == 0
    assert any((tmp_path / "sum").iterdir())


# ---- the released view mapper as model.pretrained_view_mapper ------------------------------------


def test_an_imported_view_mapper_is_a_pretrained_view_mapper(released_view_mapper, synthetic_dtu_root,
                                                             tiny_model_dir, tmp_path, monkeypatch):
    path, original = released_view_mapper
    out = tmp_path / "released-88scans"
    result = import_original(path, out, calibration=synthetic_dtu_root / "Calibration" / "cal18")
    assert result.learnable_mode == 3 and result.steps == [50000] and result.tokens == []
    info = read_checkpoint_info(out / "checkpoints" / "checkpoint-50000")
    assert info["output_bypass_alpha_view"] == 5.0  # the original's load_mapper gives it the object alpha
    assert info["config"]["data"]["dtu_pretrain_scans"] == [2, 21]

    mapper = load_pretrained_view_mapper(str(out), text_width=TEXT_WIDTH, camera_representation="dtu-12d")
    cam_min, cam_max = original_camera_ranges(synthetic_dtu_root / "Calibration" / "cal18")
    cams = torch.stack([cam_min, cam_max, (cam_min + cam_max) / 2])
    t, layer = torch.tensor([999.0, 0.0, 500.0]), torch.tensor([0.0, 15.0, 7.0])
    with torch.no_grad():
        for g, w in zip(mapper(t, layer, cams), original_forward(original, 0.3791, t, layer, cams, cam_min, cam_max),
                        strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)

    # By name through a registry, as configs/view_mappers.yaml names the released one (the pipeline's
    # pretrained_view_mapper resolves through the same function).
    registry = tmp_path / "view_mappers.yaml"
    registry.write_text(f"released-test:\n  path: {out}\n  description: test entry\n")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert resolve_view_mapper_path("released-test") == out / "checkpoints" / "checkpoint-50000" / "mappers" / "view"

    # View-controlled generation takes it (and the base model it records).
    small = ViewNetiConfig.model_validate({"run": {"device": "cpu"},
                                           "eval": {"width": 64, "height": 48, "num_denoising_steps": 2}})
    images = run_generate("released-test", "<view>. A photo of a teddy bear", {25: cams_of(synthetic_dtu_root)[25]},
                          [0], tmp_path / "generated", config=small, progress=False)
    assert [p.name for p in images] == ["seed0_cam25_random-weights.png"]

    # A mode-5 fit starts from it and keeps it frozen.
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path / "runs", 5, "fit",
                               model={"pretrained_view_mapper": "released-test"}, optim={"max_train_steps": 2},
                               log={"save_steps": 2})
    fit = train(config, progress=False)
    fitted = load_checkpoint_mappers(fit.final_checkpoint)
    for name, tensor in mapper.state_dict().items():
        assert torch.equal(fitted["view"].state_dict()[name], tensor), name


def test_the_registry_names_the_released_88_scene_mapper():
    entry = read_registry(DEFAULT_REGISTRY)["viewneti-released-88scans"]
    assert "import-original" in entry["description"] and "key 8" in entry["description"]
    if (DEFAULT_REGISTRY.parent.parent / entry["path"]).exists():
        pytest.skip("the released mapper is installed here")
    with pytest.raises(FileNotFoundError, match="import-original"):
        resolve_view_mapper_path("viewneti-released-88scans")


# ---- bad input: clear errors, nothing run, nothing written ---------------------------------------


def test_files_that_are_not_original_checkpoints_are_refused(tmp_path, synthetic_dtu_root):
    text = tmp_path / "mapper-steps-10_view.pt"
    text.write_text("not a checkpoint\n")
    tensors = tmp_path / "mapper-steps-20_view.pt"
    torch.save({"weight": torch.ones(3)}, tensors)
    legacy = tmp_path / "mapper-steps-30_view.pt"
    torch.save({"weight": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    out = tmp_path / "out"
    for path, message in ((text, "not a torch.save file"), (tensors, r"expected a dict with 'cfg' and 'mappers'"),
                          (legacy, "legacy")):
        with pytest.raises(OriginalCheckpointError, match=message) as err:
            import_original(path, out, dtu_root=synthetic_dtu_root)
        assert str(path) in str(err.value)
        assert nothing_written(out)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])  # torch.save's default, and one with STACK_GLOBAL opcodes
def test_a_pickle_naming_an_unexpected_global_is_refused_and_not_run(protocol, tmp_path, tiny_model_dir,
                                                                     synthetic_dtu_root):
    marker = tmp_path / "payload-ran"
    view, _ = make_mappers(1)
    path = tmp_path / "mapper-steps-10_view.pt"
    with original_modules():  # the payload first, so that a plain unpickler would reach it before anything else
        torch.save({"encode_phi": _Payload(marker), "cfg": original_cfg(3, base=str(tiny_model_dir)),
                    "mappers": {"d": {"state_dict": view.state_dict(), "encoder": view.encoder,
                                      "placeholder_object_token": "dummy"}}}, path, pickle_protocol=protocol)
    out = tmp_path / "out"
    with pytest.raises(OriginalCheckpointError, match=r"global 'posix\.system'") as err:
        import_original(path, out, dtu_root=synthetic_dtu_root)
    assert str(path) in str(err.value)
    assert not marker.exists() and nothing_written(out)
    # Control: the payload is live; a plain unpickler of the same bytes runs it (then stops at the first tensor).
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("case", ["object-vs-view-width", "base-model-width", "spherical-cameras",
                                  "3-number-camera", "arch-14", "no-target-norm"])
def test_mismatches_are_refused_naming_the_file(case, tmp_path, tiny_model_dir, synthetic_dtu_root):
    base = str(tiny_model_dir)
    folder = tmp_path / RUN_NAME
    expect_file, message = folder / "mapper-steps-1500_view.pt", None
    if case == "object-vs-view-width":
        view, _ = make_mappers(1, width=48)
        _, obj = make_mappers(2)
        save_original(folder / "mapper-steps-1500_object.pt", original_cfg(5, base=base), {1: (obj, "<object>")})
        save_original(folder / "mapper-steps-1500_view.pt", original_cfg(5, 48, base), {"d": (view, "dummy")})
        message = "text width mismatch"
    elif case == "base-model-width":
        write_mode5_run(folder, base, width=48, steps=(1500,))
        expect_file, message = folder / "mapper-steps-1500_object.pt", "48-dim embeddings .* 32-dim text encoder"
    elif case == "spherical-cameras":
        view, _ = make_mappers(1)
        cfg = original_cfg(3, base=base)
        cfg["data"]["camera_representation"] = "spherical"
        save_original(expect_file, cfg, {"d": (view, "dummy")})
        message = "'spherical' cameras"
    elif case == "3-number-camera":
        view, _ = make_mappers(1, view_sigmas=[0.03, 2.0, 1.0, 1.0, 1.0])
        save_original(expect_file, original_cfg(3, base=base), {"d": (view, "dummy")})
        message = "takes 5 inputs .* camera representation mismatch"
    elif case == "arch-14":
        view, _ = make_mappers(1)
        save_original(expect_file, original_cfg(3, base=base, arch_view_net=14), {"d": (view, "dummy")})
        message = "arch_view_net is 14"
    elif case == "no-target-norm":
        view, _ = make_mappers(1)
        save_original(expect_file, original_cfg(3, base=base, target_norm_view=None), {"d": (view, "dummy")})
        message = "target_norm_view is not set"
    out = tmp_path / "out"
    with pytest.raises(OriginalCheckpointError, match=message) as err:
        import_original(folder, out, dtu_root=synthetic_dtu_root)
    assert str(expect_file) in str(err.value)
    assert nothing_written(out)


def test_a_view_mapper_needs_the_calibration_cameras_and_a_run_needs_its_data(released_run, released_view_mapper,
                                                                             synthetic_dtu_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OriginalCheckpointError, match="--dtu-root or --calibration"):
        import_original(released_view_mapper[0], out)
    with pytest.raises(OriginalCheckpointError, match="needs --dtu-root"):
        import_original(released_run[0], out, calibration=synthetic_dtu_root / "Calibration" / "cal18")
    with pytest.raises(OriginalCheckpointError, match="no files for step 2000; steps found: \\[1500, 3000\\]"):
        import_original(released_run[0], out, dtu_root=synthetic_dtu_root, step=2000)
    assert nothing_written(out)
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    with pytest.raises(FileExistsError):
        import_original(released_run[0], out, dtu_root=synthetic_dtu_root)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
