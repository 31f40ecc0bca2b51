"""Training on the tiny model and synthetic DTU scenes: learning signal, frozen mappers, resume, errors.

The tiny model has random weights, so its loss landscape is shallow and the per-step loss is
dominated by the random timestep and noise draws. To see the learning signal without that noise we
compare each run with a *paired baseline*: the same config and seed with a vanishing learning rate
draws exactly the same images, timesteps and noise at every step, so the per-step difference of the
two loss curves is what the optimiser achieved.
"""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.runs import BASELINE_LR
from fixtures.runs import make_train_config as make_config
from safetensors.torch import load_file

from viewneti_cli.viewneti import main as cli_main
from viewneti_core.base_model.sd_models import load_components
from viewneti_core.config import ConfigError, ViewNetiConfig, load_config
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.method.mappers import MapperConfig, NeTIMapper, save_mapper
from viewneti_core.training.batches import build_training_data
from viewneti_core.training.checkpoints import list_checkpoints, load_checkpoint_mappers
from viewneti_core.training.trainer import TrainingSetupError, train


def _data_root(mode: int, synthetic_dtu_root: Path, image_folder: Path) -> Path:
    return image_folder if mode == 0 else synthetic_dtu_root


@pytest.mark.parametrize("mode", [0, 2, 3, 5])
def test_training_lowers_the_loss(mode, synthetic_dtu_root, image_folder, tiny_model_dir, pretrained_run, tmp_path):
    root = _data_root(mode, synthetic_dtu_root, image_folder)
    extra = {"model": {"pretrained_view_mapper": str(pretrained_run)}} if mode == 5 else {}
    trained = train(make_config(root, tiny_model_dir, tmp_path, mode, "trained", **extra), progress=False)
    extra.setdefault("optim", {})["learning_rate"] = BASELINE_LR
    baseline = train(make_config(root, tiny_model_dir, tmp_path, mode, "baseline", **extra), progress=False)

    losses, reference = np.array(trained.losses), np.array(baseline.losses)
    assert len(losses) == len(reference) == 30
    assert losses[0] == pytest.approx(reference[0], abs=1e-6)  # same start: the pairing is exact
    gain = losses - reference  # < 0 where the trained mappers do better on the identical draws
    window = 8
    first, last = gain[:window].mean(), gain[-window:].mean()
    assert last < first, (first, last)
    assert last < -1e-3 * reference.mean(), f"no learning signal: last-window gain {last:.2e}"
    assert (gain[-window:] < 0).all(), gain[-window:]
    # The raw curve of the trained run, first vs last window, relative to the same windows of the baseline.
    assert losses[-window:].mean() - losses[:window].mean() < reference[-window:].mean() - reference[:window].mean()


def _mapper_state(mapper: NeTIMapper) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in mapper.state_dict().items()}


@pytest.mark.parametrize("mode", [4, 5])
def test_pretrained_view_mapper_is_frozen_only_in_mode_5(mode, synthetic_dtu_root, tiny_model_dir, pretrained_run,
                                                         tmp_path):
    before = _mapper_state(load_checkpoint_mappers(list_checkpoints(pretrained_run)[-1])[VIEW_MAPPER_KEY])
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, mode, f"mode{mode}",
                         model={"pretrained_view_mapper": str(pretrained_run)}, optim={"max_train_steps": 4})
    result = train(config, progress=False)
    mappers = load_checkpoint_mappers(result.final_checkpoint)
    after = _mapper_state(mappers[VIEW_MAPPER_KEY])
    identical = all(torch.equal(before[k], after[k]) for k in before)
    assert identical == (mode == 5)
    object_before = "<object>"
    assert object_before in mappers


@pytest.mark.parametrize("mode", [2, 3])
def test_kill_and_resume_matches_an_uninterrupted_run(mode, synthetic_dtu_root, tiny_model_dir, tmp_path):
    """Augmentation on, so the resumed run must also restore the RNG streams to match."""
    sections = {"optim": {"max_train_steps": 6}, "log": {"save_steps": 2}, "data": {"augmentation": "fitting"}}
    full = train(make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, mode, "full", **sections), progress=False)

    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, mode, "killed", **sections)

    class Killed(RuntimeError):
        pass

    def kill_at_step_3(step: int) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(config, on_step_end=kill_at_step_3, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["checkpoint-2"]
    assert _metric_steps(tmp_path / "killed") == [1, 2, 3]
    resumed = train(config, resume="latest", progress=False)

    assert resumed.steps == 6
    assert _metric_steps(tmp_path / "killed") == [1, 2, 3, 4, 5, 6]  # step 3 of the killed run is not kept twice
    assert resumed.losses == pytest.approx(full.losses[2:], abs=0)  # steps 3..6 replayed identically
    want, got = load_checkpoint_mappers(full.final_checkpoint), load_checkpoint_mappers(resumed.final_checkpoint)
    assert sorted(want) == sorted(got)
    for key in want:
        for name, tensor in want[key].state_dict().items():
            assert torch.equal(tensor, got[key].state_dict()[name]), (key, name)


def _metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_a_configuration_that_makes_the_checkpoint_meaningless(synthetic_dtu_root, tiny_model_dir,
                                                                             tmp_path, capsys):
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "scan114",
                         optim={"max_train_steps": 2}, log={"save_steps": 2}, eval={"final_validation": False})
    train(config, progress=False)
    run_dir = tmp_path / "scan114"
    before = {name: (run_dir / name).read_text() for name in ("config.yaml", "metrics.jsonl")}

    code = cli_main(["train", "--config", str(run_dir / "config.yaml"), "--resume", "latest",
                     "--data.dtu_scan", "21", "--optim.learning_rate", "0.5", "--model.mapper_hidden_dim", "32"])
    assert code == 2
    err = capsys.readouterr().err
    for key in ("data.dtu_scan: 114 -> 21", "optim.learning_rate: 0.01 -> 0.5", "model.mapper_hidden_dim: 64 -> 32"):
        assert key in err, (key, err)
    with pytest.raises(TrainingSetupError, match=r"optim\.max_train_steps 1 is below the checkpoint's step 2"):
        train(config.model_copy(update={"optim": config.optim.model_copy(update={"max_train_steps": 1})}),
              resume="latest", on_step_end=_never, progress=False)
    assert {name: (run_dir / name).read_text() for name in before} == before  # nothing written

    more = load_config(run_dir / "config.yaml", ["--optim.max_train_steps", "3", "--log.save_steps", "5",
                                                 "--log.report_to", "none", "--run.device", "cpu"])
    resumed = train(more, resume="latest", progress=False)
    assert resumed.steps == 3 and len(resumed.losses) == 1
    assert _metric_steps(run_dir) == [1, 2, 3]


def test_resume_of_a_run_killed_before_its_first_checkpoint(synthetic_dtu_root, tiny_model_dir, tmp_path):
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "early", optim={"max_train_steps": 4})

    class Killed(RuntimeError):
        pass

    def kill(step: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        train(config, on_step_end=kill, progress=False)
    assert (tmp_path / "early" / "metrics.jsonl").is_file() and not list_checkpoints(tmp_path / "early")
    with pytest.raises(TrainingSetupError, match=r"holds no checkpoint yet .* set log\.overwrite_ok true .* "
                                                 r"choose another log\.exp_name"):
        train(config, resume="latest", on_step_end=_never, progress=False)


_SEEDED_DRAWS = """
import random, sys
from pathlib import Path
import numpy as np
from fixtures.runs import make_train_config
from viewneti_core.training.trainer import train

root, model_dir, runs = map(Path, sys.argv[1:4])
draws = []
for name, garbage in (("a", 1), ("b", 2)):
    np.random.seed(garbage)
    random.seed(garbage)
    config = make_train_config(root, model_dir, runs, 2, name, optim={"max_train_steps": 1},
                               eval={"final_validation": False})
    train(config, on_step_end=lambda step: draws.append((np.random.rand(), random.random())), progress=False)
print(repr(draws))
"""


def test_optim_seed_seeds_numpy_and_python_random(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """Whatever the global RNGs held before, a seeded run draws the same numbers from them.

    Runs in a fresh interpreter: threads that earlier tests leave behind (Dask comms, Prefect
    clients) draw from python's global `random` for their retry jitter at any moment, which would
    make the draws here differ for reasons that have nothing to do with training."""
    env = dict(os.environ) | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SEEDED_DRAWS, str(synthetic_dtu_root), str(tiny_model_dir),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    draws = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(draws) == 2 and draws[0] == draws[1], draws
    assert draws[0] != (np.random.RandomState(1).rand(), random.Random(1).random())  # the garbage seed was replaced


def test_placeholder_already_in_the_tokenizer(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """A token the tokenizer already has would be replaced by the mapper wherever it occurs."""
    from transformers import AddedToken

    components = load_components(tiny_model_dir)
    components.tokenizer.add_tokens([AddedToken("<object>", special=True)])
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "taken_token")
    with pytest.raises(TrainingSetupError, match="placeholder token.s. <object> already exist in the tokenizer"):
        train(config, components=components, on_step_end=_never, progress=False)
    assert not (tmp_path / "taken_token").exists()


def test_a_scan_directory_as_train_data_dir(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """The original's form `--data.train_data_dir .../Rectified/scan114` reads the tree and scan 114."""
    config = make_config(synthetic_dtu_root / "Rectified" / "scan114", tiny_model_dir, tmp_path, 2, "x")
    assert (config.data.train_data_dir, config.data.dtu_scan) == (synthetic_dtu_root, 114)
    data = build_training_data(config)
    assert len(data.dataset.images) == 3  # dtu_subset 3 of scan 114


def test_checkpoints_need_no_pickle_and_hold_what_inference_needs(synthetic_dtu_root, tiny_model_dir, pretrained_run):
    checkpoints = list_checkpoints(pretrained_run)
    assert [p.name for p in checkpoints] == ["checkpoint-3", "checkpoint-6"]
    for checkpoint in checkpoints:
        files = [p for p in checkpoint.rglob("*") if p.is_file()]
        assert files and {p.suffix for p in files} <= {".safetensors", ".json"}, files
        for path in files:
            if path.suffix == ".safetensors":
                assert load_file(str(path))  # loads with safetensors alone, no pickle
            else:
                json.loads(path.read_text())
    info = json.loads((checkpoints[-1] / "checkpoint.json").read_text())
    assert info["step"] == 6
    assert info["base_model"] and info["text_width"] == 32
    assert info["camera_representation"] == "dtu-12d"
    assert info["object_tokens"] == ["<scan2>", "<scan21>"] and info["view_token"] == "<view>"
    assert info["weights"] == "random"  # the label follows the tiny model into every artifact
    assert not list(pretrained_run.glob("checkpoints/.*")), "no temp directories left behind"


def test_cli_train_with_dotted_overrides(synthetic_dtu_root, tiny_model_dir, tmp_path):
    config_file = tmp_path / "mode2.yaml"
    config_file.write_text(
        "learnable_mode: 2\n"
        f"model: {{pretrained_model_name_or_path: '{tiny_model_dir}'}}\n"
        f"data: {{train_data_dir: '{synthetic_dtu_root}', width: 64, height: 48}}\n"
    )  # log.report_to left at its default: TensorBoard
    code = cli_main(["train", "--config", str(config_file), "--optim.max_train_steps", "2",
                     "--log.exp_dir", str(tmp_path / "runs"), "--log.exp_name", "cli", "--run.device", "cpu",
                     "--eval.validation_steps", "1000", "--eval.width", "64", "--eval.height", "48",
                     "--eval.num_denoising_steps", "2"])
    assert code == 0
    assert [p.name for p in list_checkpoints(tmp_path / "runs" / "cli")] == ["checkpoint-2"]
    assert load_config(tmp_path / "runs" / "cli" / "config.yaml").optim.max_train_steps == 2
    assert (tmp_path / "runs" / "cli" / "validation" / "step-000002.png").is_file()  # the final validation grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "runs" / "cli" / "logs").rglob("events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    for tag in ("loss", "lr"):
        assert [e.step for e in board.Scalars(tag)] == [1, 2], tag
    assert all(np.isfinite(e.value) and e.value > 0 for e in board.Scalars("loss"))


# ---- bad input: a clear error before any training step -----------------------------------------


def _never(step: int) -> None:
    raise AssertionError(f"a training step ran (step {step}) although the input was bad")


def _save_view_mapper(path: Path, text_width: int, representation: str) -> Path:
    from viewneti_core.data.cameras import CameraNormalization

    dim = 12 if representation == "dtu-12d" else 3
    norm = CameraNormalization(representation, tuple([-1.0] * dim), tuple([1.0] * dim))
    mapper = NeTIMapper(MapperConfig(kind="view", output_dim=text_width, target_norm=1.0,
                                     camera_normalization=norm.to_dict(), token="<view>"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mapper(mapper, path)
    return path


def test_mode_1_is_rejected():
    with pytest.raises((ConfigError, ValueError), match="learnable_mode 1"):
        ViewNetiConfig.model_validate({"learnable_mode": 1})


@pytest.mark.parametrize("mode", [4, 5])
def test_modes_4_and_5_need_a_pretrained_view_mapper(mode, synthetic_dtu_root, tiny_model_dir, tmp_path):
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, mode, "x")
    with pytest.raises(TrainingSetupError, match="pretrained_view_mapper"):
        train(config, on_step_end=_never, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("width", "representation", "message"), [
    (64, "dtu-12d", "text width"),
    (32, "spherical", "takes spherical cameras, but data.camera_representation is dtu-12d"),
])
def test_incompatible_pretrained_view_mapper(width, representation, message, synthetic_dtu_root, tiny_model_dir,
                                             tmp_path):
    mapper = _save_view_mapper(tmp_path / "mapper" / "view_mapper", width, representation)
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 5, "x",
                         model={"pretrained_view_mapper": str(mapper)})
    with pytest.raises(ValueError, match=message.replace("text width", "dim embeddings")):
        train(config, on_step_end=_never, progress=False)
    assert not list_checkpoints(tmp_path / "x")


def test_existing_run_dir_needs_overwrite_ok(synthetic_dtu_root, tiny_model_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("{}\n")
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "taken")
    with pytest.raises(TrainingSetupError, match="overwrite_ok"):
        train(config, on_step_end=_never, progress=False)
    assert (tmp_path / "taken" / "metrics.jsonl").read_text() == "{}\n"  # nothing lost


def test_image_folder_without_images(tiny_model_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.md").write_text("no images here\n")
    config = make_config(folder, tiny_model_dir, tmp_path, 0, "x")
    with pytest.raises(ValueError, match="no usable images"):
        train(config, on_step_end=_never, progress=False)


def test_dtu_tree_without_the_scan(synthetic_dtu_root, tiny_model_dir, tmp_path):
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "x", data={"dtu_scan": 8})
    with pytest.raises(FileNotFoundError, match="viewneti data prepare"):
        train(config, on_step_end=_never, progress=False)


def test_cached_vae_posteriors_train_like_re_encoding(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """Un-augmented data: sampling from the cached (mean, std) draws the same latents as re-encoding."""
    sections = {"optim": {"max_train_steps": 5}}
    plain = train(make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "plain", **sections), progress=False)
    sections["optim"] |= {"cache_vae_posteriors": True}
    cached = train(make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "cached", **sections), progress=False)
    np.testing.assert_allclose(cached.losses, plain.losses, rtol=1e-4)
    with pytest.raises(TrainingSetupError, match="augmentation none"):
        train(make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "aug", data={"augmentation": "fitting"},
                          **sections), on_step_end=_never, progress=False)


def test_bf16_mixed_precision_trains_fp32_mappers(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """bf16 frozen nets, fp32 mappers: the fp32 run's losses up to bf16 rounding -- close, not equal.
    Measured 2026-12-04 (tiny model, 6 steps): relative differences 0.09% to 0.44% per step."""
    runs = {}
    for precision in ("no", "bf16"):
        config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, f"precision-{precision}",
                             optim={"max_train_steps": 3, "mixed_precision": precision})
        result = train(config, progress=False)
        runs[precision] = (np.array(result.losses), load_checkpoint_mappers(result.final_checkpoint))
    (fp32_losses, _), (bf16_losses, bf16_mappers) = runs["no"], runs["bf16"]
    assert all(p.dtype == torch.float32 for m in bf16_mappers.values() for p in m.parameters())
    assert not np.array_equal(bf16_losses, fp32_losses), "bf16 gave fp32's losses bit for bit: it did not run"
    np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=2e-2)  # ~5x the largest measured difference


def test_wandb_requested_but_missing(synthetic_dtu_root, tiny_model_dir, tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed here; the error path needs it absent")
    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "wb", log={"report_to": "wandb"})
    with pytest.raises(TrainingSetupError, match=r"pip install 'viewneti\[wandb\]'"):
        train(config, on_step_end=_never, progress=False)


def test_data_parallel_pretraining_with_two_processes(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """The multi-GPU path (DDP through accelerate) run on CPU with gloo: 2 ranks, lr scaled by 2. The replicas
    end with identical mappers, the ones rank 0's checkpoint holds, and they equal one process that trains
    on the combined batch: rank r takes micro-batches r, r+2, ... of the epoch, so one process accumulating
    2 micro-batches per step sees the same images, and (each image drawing its noise from its own seed)
    the same noise; the mean of the ranks' gradients is the accumulated gradient."""
    import subprocess
    import sys

    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(
        "learnable_mode: 3\nrun: {device: cpu}\n"
        f"log: {{exp_name: ddp, exp_dir: '{tmp_path}', save_steps: 2, report_to: none}}\n"
        f"data: {{train_data_dir: '{synthetic_dtu_root}', dtu_subset: 3, dtu_pretrain_scans: [2, 21], width: 64, "
        "height: 48, augmentation: none, repeats: 4}\n"
        f"model: {{pretrained_model_name_or_path: '{tiny_model_dir}'}}\n"
        "eval: {final_validation: false}\n"
        "optim: {max_train_steps: 2, gradient_accumulation_steps: 1, seed: 0}\n"
    )
    done = subprocess.run(
        # --standalone: the rendezvous store binds a free port itself (not the default master port 29500,
        # which a concurrent test session or another job on the machine may hold).
        # tests/fixtures/ddp_runner.py: `viewneti train` as is, then each rank saves the mappers it trained.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).parent / "fixtures" / "ddp_runner.py"), str(config_file), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("lr 6.00e-03") == 2  # both ranks ran, lr = 1e-3 x batch 3 x 2 processes
    assert [p.name for p in list_checkpoints(tmp_path / "ddp")] == ["checkpoint-2"]
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 writes
    # Gradients are averaged across ranks before every step: the replicas stay identical.
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    saved = load_checkpoint_mappers(tmp_path / "ddp" / "checkpoints" / "checkpoint-2")
    assert {f"{key}/{name}" for key, mapper in saved.items() for name in mapper.state_dict()} == set(ranks[0])
    for key, mapper in saved.items():
        for name, value in mapper.state_dict().items():
            assert torch.equal(value, ranks[0][f"{key}/{name}"]), (key, name)

    # one process, same seed, the 2 ranks' micro-batches accumulated into each step (lr: 1e-3 x 3 x 2 again)
    single = load_config(config_file, {"log": {"exp_name": "single"}, "optim": {"gradient_accumulation_steps": 2}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran (OMP_NUM_THREADS=1): the same summation order in each kernel
    try:
        train(single, progress=False)
    finally:
        torch.set_num_threads(threads)
    combined = load_checkpoint_mappers(tmp_path / "single" / "checkpoints" / "checkpoint-2")
    for key, mapper in combined.items():
        for name, value in mapper.state_dict().items():
            replica = ranks[0][f"{key}/{name}"]
            # all-reduce mean vs accumulated sum: the same gradient up to float rounding
            torch.testing.assert_close(replica, value, rtol=1e-4, atol=1e-5, msg=f"{key}/{name}")


def test_loader_worker_processes_train_like_the_main_process(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """The CUDA default runs augmentation in DataLoader worker processes: every item is augmented
    under its own seed (run seed, epoch, position), so two worker processes give exactly the losses of
    the in-process loader, with and without augmentation."""
    def losses(name, workers, augmentation):
        config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, name, optim={"max_train_steps": 4},
                             data={"dataloader_num_workers": workers, "augmentation": augmentation},
                             eval={"final_validation": False})
        return train(config, progress=False).losses

    assert losses("in_process", 0, "none") == losses("two_workers", 2, "none")
    augmented = losses("augmented_in_process", 0, "fitting")
    assert augmented == losses("augmented_two_workers", 2, "fitting")
    assert augmented != losses("plain", 0, "none")  # the augmentations did run


def test_an_item_is_augmented_the_same_whatever_the_global_rng_held(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """What makes mid-epoch resumes with loader workers exact: an item's augmentation depends on its
    seed only, and it leaves the caller's RNG where it was."""
    from viewneti_core.training.batches import SeededItems, seeded_batches

    config = make_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "items", data={"augmentation": "fitting"})
    data = build_training_data(config)
    items = SeededItems(data.dataset)
    (first, *_), *_ = seeded_batches(data.batches(0), 0, 0)
    torch.manual_seed(1)
    a = items[first]["pixel_values"]
    state = torch.get_rng_state()
    torch.manual_seed(2)
    b = items[first]["pixel_values"]
    assert torch.equal(a, b)
    torch.manual_seed(2)
    items[first]
    assert not torch.equal(torch.get_rng_state(), state) and torch.equal(torch.get_rng_state(), torch.manual_seed(2).get_state())
    other = seeded_batches(data.batches(1), 0, 1)[0][0]
    assert not torch.equal(items[(first[0], other[1])]["pixel_values"], a)  # another epoch's seed: other draws
