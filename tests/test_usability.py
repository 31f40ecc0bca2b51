"""First use: a fast `--help`, honest log lines, readable plots, one preflight error listing everything
missing, quiet model loading, and pipeline configurations that do not depend on how paths were written."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "pandas", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["train", "--help"], ["evaluate", "--help"],
                                  ["config", "show"]])
def test_cli_help_and_config_do_not_import_torch(argv, tmp_path):
    """`viewneti --help` took 5.5 s because building the parser imported torch, diffusers and pandas."""
    code = (
        "import json, sys\n"
        "from viewneti_cli.viewneti import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout or "learnable_mode" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_data_subcommands_still_parse_their_arguments():
    from viewneti_cli.viewneti import build_parser

    args, rest = build_parser().parse_known_args(["data", "make-synthetic", "--out", "x", "--scans", "8"])
    assert args.out == Path("x") and not rest
    text = subprocess.run([sys.executable, "-m", "viewneti_cli.viewneti", "data", "prepare", "--help"],
                          capture_output=True, text=True, timeout=120).stdout
    assert "--scans" in text and "--out" in text


def test_per_view_plot_shows_every_series():
    """In metrics_per_view.png the 1-view series sat exactly behind the 3-view one (same x, same marker)."""
    from viewneti_core.evaluation.summary import per_view_figure

    rows = [{"protocol": "viewneti", "n_views": n, "step": 10, "weights": "random", "masked": True,
             "cam": cam, "role": "train" if cam == 25 else "test", "psnr": 12.0, "lpips": 0.1}
            for n in (1, 3) for cam in (1, 2, 25)]
    fig = per_view_figure(pd.DataFrame(rows))
    series = [line for line in fig.axes[0].lines if not line.get_label().startswith("_")]
    assert [line.get_label() for line in series] == ["viewneti n=1 step 10 RANDOM", "viewneti n=3 step 10 RANDOM"]
    xs = [set(line.get_xdata()) for line in series]
    assert not xs[0] & xs[1], "the series are drawn at the same x positions"
    assert series[0].get_marker() != series[1].get_marker()
    assert all(line.get_alpha() is not None and line.get_alpha() < 1 for line in series)
    for line in series:  # each stays within half a camera of its camera index
        assert all(abs(x - round(x)) < 0.5 for x in line.get_xdata())


def test_training_logs_the_number_of_distinct_images(synthetic_dtu_root, tiny_model_dir, tmp_path, caplog):
    """It logged len(dataset) = images x data.repeats ("60 images" for 3 views repeated 20 times)."""
    from fixtures.runs import make_train_config

    from viewneti_core.training.trainer import train

    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "count", optim={"max_train_steps": 1})
    with caplog.at_level(logging.INFO, logger="viewneti_core.training.trainer"):
        train(config, progress=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("training mode"))
    assert " 3 images (each seen 20 times per epoch)" in line, line


def test_loading_a_local_model_prints_no_progress_bars(tiny_model_dir, capfd):
    from transformers.utils import logging as transformers_logging

    from viewneti_core.base_model.sd_models import load_components

    load_components(tiny_model_dir)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert transformers_logging.is_progress_bar_enabled()  # restored for everything else


def test_preflight_names_every_missing_thing_at_once(tmp_path, monkeypatch):
    """It stopped at the first one: fix the model, run again, only then learn the VGG file is missing."""
    from viewneti_core.errors import PreflightError
    from viewneti_core.evaluation.metrics import VGG16_FILE
    from viewneti_core.preflight import check_requirements

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    missing_model = tmp_path / "no-such-model"
    with pytest.raises(PreflightError) as info:
        check_requirements([(str(missing_model), None), ("builtin:sd15", None)], "pretrained")
    text = str(info.value)
    assert text.startswith("3 things this run needs are missing:")
    assert str(missing_model) in text and "unknown builder 'sd15'" in text and VGG16_FILE in text
    assert "--lpips none" in text and "TORCH_HOME" in text
    assert isinstance(info.value, FileNotFoundError)  # the CLIs report it as a user error
    assert check_requirements([("builtin:tiny", None)], "random") == {"models": ["builtin:tiny"], "lpips": "random"}


def test_demo_command_and_demo_deployment_resolve_to_the_same_run_configs(tmp_path, monkeypatch):
    """`viewneti-pipeline demo` passes absolute paths, the dtu-benchmark/demo deployment the relative ones
    of configs/demo.yaml: each saw the other's runs as "a different configuration" and retrained them."""
    from flows.params import item_config, load_benchmark_config, pretrain_config
    from viewneti_cli.pipeline import DEMO_CONFIG, _load, demo_overrides

    monkeypatch.chdir(tmp_path)  # the deployment's relative paths are taken from the worker's cwd
    out = (tmp_path / "outputs" / "pipeline-demo").absolute()
    deployment = next(d for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
                      if d["name"] == "demo")
    from_deployment = load_benchmark_config(overrides=deployment["parameters"]["config"]).resolved()
    sources = from_deployment.data.sources
    from_command = _load(DEMO_CONFIG, demo_overrides(out, sources), []).resolved()
    mapper = str(from_command.pretrain_run_dir / "checkpoints" / "checkpoint-20")
    pairs = [(pretrain_config(from_command), pretrain_config(from_deployment))]
    pairs += [(item_config(c, 21, 1, mapper), item_config(d, 21, 1, mapper)) for c, d in [(from_command, from_deployment)]]
    for ours, theirs in pairs:
        assert ours.model_dump(mode="json") == theirs.model_dump(mode="json")
    assert from_deployment.fit.model.pretrained_model_name_or_path == "builtin:mini-world"
    assert from_command.pretrained_view_mapper == from_deployment.pretrained_view_mapper == "mini-world"


def test_resolving_keeps_hub_ids_builtin_models_and_registry_names(tmp_path):
    from flows.params import BenchmarkConfig

    config = BenchmarkConfig.model_validate({
        "pretrained_view_mapper": "dtu-pretrained",
        "fit": {"learnable_mode": 5, "model": {"pretrained_model_name_or_path": "builtin:tiny"}},
        "pretrain": {"learnable_mode": 3, "model": {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1"}},
    }).resolved(tmp_path)
    assert config.fit.model.pretrained_model_name_or_path == "builtin:tiny"
    assert config.pretrain.model.pretrained_model_name_or_path == "stabilityai/stable-diffusion-2-1"
    assert config.pretrained_view_mapper == "dtu-pretrained"
    (tmp_path / "models" / "sd").mkdir(parents=True)  # an existing relative directory is a path
    local = BenchmarkConfig.model_validate({
        "fit": {"learnable_mode": 5, "model": {"pretrained_model_name_or_path": "models/sd"}},
        "pretrain": {"learnable_mode": 3, "model": {"pretrained_model_name_or_path": "models/sd"}},
    }).resolved(tmp_path)
    assert local.fit.model.pretrained_model_name_or_path == str(tmp_path / "models" / "sd")


# ---- long runs on a CPU: progress and one warning -------------------------------------------------------


def test_shipped_sd_size_configs_warn_on_a_cpu_and_name_the_keys():
    from viewneti_core.config import load_config
    from viewneti_core.training.cpu_budget import cpu_warning, sampling_work, training_work

    tiny_unet = 2_446_788
    config = load_config(REPO / "configs" / "fit_mode5_3view.yaml")
    work = training_work(config, config.optim.max_train_steps)
    message = cpu_warning("cpu", tiny_unet, work)
    assert message is not None
    for key in ("data.width", "data.height", "optim.max_train_steps", "eval.width", "eval.num_denoising_steps",
                "eval.final_validation", "run.device cuda"):
        assert key in message, key
    assert "512x384" in message and "768x576" in message
    assert cpu_warning("cuda:0", tiny_unet, work) is None  # only the CPU is warned about
    small = load_config(REPO / "configs" / "core_demo.yaml")
    assert cpu_warning("cpu", tiny_unet, sampling_work(small, 6 * 2)) is None  # the demo's sizes are fine
    assert "--seeds" in cpu_warning("cpu", tiny_unet, sampling_work(config, 2, ("--cameras", "--seeds")))
    assert "minutes per image" in cpu_warning("cpu", 865_910_724, sampling_work(small, 1))  # SD 2.1 on a CPU


class _Stop(Exception):
    pass


def _stop(step: int) -> None:
    raise _Stop


def test_training_warns_once_before_a_long_cpu_run(synthetic_dtu_root, tiny_model_dir, tmp_path):
    from fixtures.runs import make_train_config

    from viewneti_core.training.trainer import train

    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "long",
                               optim={"max_train_steps": 50_000, "train_batch_size": 1})
    class Collect(logging.Handler):  # on the logger itself: counts what it emits, whatever other tests
        def __init__(self):             # in this process attached to the loggers above it
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    collect = Collect()
    budget = logging.getLogger("viewneti_core.training.cpu_budget")
    budget.addHandler(collect)
    try:
        with pytest.raises(_Stop):
            train(config, progress=False, on_step_end=_stop)  # stopped after its first step
    finally:
        budget.removeHandler(collect)
    warnings = [r.getMessage() for r in collect.records]
    assert len(warnings) == 1 and "training: ~150000 UNet evaluations' worth at 64x48" in warnings[0]
    assert "optim.max_train_steps" in warnings[0]


def test_validation_renders_show_progress(synthetic_dtu_root, tiny_model_dir, tmp_path, capfd):
    """The final validation at SD sizes ran 11 minutes without a line of output."""
    from fixtures.runs import make_train_config

    from viewneti_core.training.trainer import train

    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "validate",
                               optim={"max_train_steps": 1},
                               eval={"validation_steps": 1, "width": 32, "height": 24, "num_denoising_steps": 2})
    train(config, progress=True)
    err = capfd.readouterr().err
    assert "validation at step 1" in err
    assert (tmp_path / "validate" / "validation" / "step-000001.png").is_file()


def test_evaluation_shows_progress(synthetic_dtu_root, tmp_path, capfd):
    from test_evaluation import TRAIN_3, make_predictions

    from viewneti_core.evaluation.scoring import evaluate_predictions

    pred = make_predictions(tmp_path / "pred", synthetic_dtu_root, 21, [1, 2], (0,), TRAIN_3)
    evaluate_predictions(pred, lpips_weights="none", eval_size=(48, 64))
    err = capfd.readouterr().err
    assert "evaluating" in err and "image" in err
    evaluate_predictions(pred, tmp_path / "quiet.parquet", lpips_weights="none", eval_size=(48, 64), progress=False)
    assert "evaluating" not in capfd.readouterr().err


# ---- documentation -----------------------------------------------------------------------------------------


def test_docs_link_only_to_files_inside_the_repository():
    """The README linked ../shared/DESIGN.md, a file outside the repository."""
    import re

    docs = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    assert REPO / "docs" / "method.md" in docs
    for doc in docs:
        text = doc.read_text()
        assert "../shared" not in text and "/work/shared" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("data:"):  # web links and inline images
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO) and path.exists(), f"{doc.name} links {target}"
    assert "(docs/method.md)" in (REPO / "README.md").read_text()
