"""The Prefect 3 + Dask pipeline on a real Prefect server and real Dask clusters (no mocks).

Sizes are tiny (32x24 images, 2 training steps, 2 denoising steps, 2 rendered views, LPIPS with a
random backbone at 24x32) so the module runs in a few minutes on 2 CPU cores. The synthetic DTU
archives are served over HTTP on 127.0.0.1, so the real download -> extract -> validate path runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures.prefect_server import delete_created_since, prefect_env, server_objects

from flows.local_services import StaticFileServer
from flows.params import BenchmarkConfig, load_benchmark_config
from tasks.fault_drills import FAIL_ITEMS_ENV, MEET_DIR_ENV
from tasks.runtime import CODE_VERSION_ENV, read_ledger
from viewneti_core.base_model.sd_models import build_components, save_components
from viewneti_core.data.synthetic import make_synthetic_dtu, write_archives

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_SCANS = [3, 4]
TEST_SCANS = [21, 114]
GPU_TASKS = {"pretrain", "fit", "infer", "evaluate"}


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-data")
    tree = make_synthetic_dtu(root / "tree", PRETRAIN_SCANS + TEST_SCANS, size=(32, 24), lights=[3], progress=False)
    archives = write_archives(tree, root / "archives")
    with StaticFileServer(root / "archives") as server:
        server.sources = [server.url(p.name) for p in archives.values()]
        yield server


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_components(build_components("tiny"), tmp_path_factory.mktemp("pipeline-model") / "tiny", builder="tiny")


def tiny_config(run_dir: Path, sources: list[str], model: Path, **top) -> dict:
    common_eval = {"num_denoising_steps": 2, "width": 32, "height": 24, "seeds": [0, 1], "eval_batch_size": 4,
                   "validation_steps": 1000, "final_validation": False}
    optim = {"max_train_steps": 2, "train_batch_size": 1, "gradient_accumulation_steps": 1, "mixed_precision": "no"}
    run = {"device": "cpu"}  # explicit, not "auto": the same on a machine with a GPU
    config = {
        "name": "test-bench",
        "run_dir": str(run_dir),
        "test_scans": TEST_SCANS,
        "n_views": [1, 3],
        "views": [25, 1],  # a training view and a DTU test view
        "data": {"sources": sources},
        "pretrain": {"learnable_mode": 3, "run": run, "model": {"pretrained_model_name_or_path": str(model)},
                     "data": {"dtu_pretrain_scans": PRETRAIN_SCANS, "dtu_subset": 0, "width": 32, "height": 24},
                     "log": {"save_steps": 1, "report_to": "none"}, "optim": optim, "eval": common_eval},
        "fit": {"learnable_mode": 5, "run": run, "model": {"pretrained_model_name_or_path": str(model)},
                "data": {"width": 32, "height": 24}, "log": {"save_steps": 1, "report_to": "none"},
                "optim": optim, "eval": common_eval},
        "evaluation": {"lpips_weights": "random", "device": "cpu", "eval_size": [24, 32], "batch_size": 8},
        "execution": {"retries": 1, "retry_delay_s": 0},
    }
    config.update(top)
    return config


def executions(ledger_dir: Path) -> Counter:
    return Counter((e["item"], e["task"]) for e in read_ledger(ledger_dir))


def assert_one_gpu_task_per_worker(ledger_dir: Path) -> set[str]:
    """Measured: the [start, end] intervals of GPU tasks on one worker never overlap."""
    per_worker = defaultdict(list)
    for entry in read_ledger(ledger_dir):
        if entry["task"] in GPU_TASKS:
            per_worker[entry["worker"]].append((entry["start"], entry["end"], f"{entry['task']}:{entry['item']}"))
    for worker, spans in per_worker.items():
        spans.sort()
        for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:], strict=False):
            assert s1 >= e0, f"worker {worker} ran {a} [{s0:.2f}, {e0:.2f}] and {b} [{s1:.2f}, {e1:.2f}] at once"
    return set(per_worker)


# ---- parameter validation ------------------------------------------------------------------------------


def test_config_files_validate_and_deployment_params_match():
    demo = load_benchmark_config(REPO / "configs" / "demo.yaml")
    assert demo.evaluation.lpips_weights == "random" and len(demo.items) == 4
    full = load_benchmark_config(REPO / "configs" / "dtu_benchmark.yaml")
    assert full == BenchmarkConfig(), "configs/dtu_benchmark.yaml must equal the flow defaults (dtu-benchmark/full)"
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]}
    assert deployments["demo"]["parameters"]["config"] == yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert {"full", "demo", "per-scan", "prepare", "pretrain", "aggregate", "on-view-mapper-ready"} <= set(deployments)
    trigger = deployments["on-view-mapper-ready"]["triggers"][0]
    assert trigger["expect"] == ["viewneti.view-mapper.ready"]
    assert set(trigger["parameters"]) == {"config_file", "view_mapper"}


@pytest.mark.parametrize(("change", "message"), [
    ({"fit": {"optim": {"max_train_stepz": 2}}}, "config.fit.optim.max_train_stepz: Extra inputs are not permitted"),
    ({"fit": {"optim": {"max_train_steps": -3}}}, "config.fit.optim.max_train_steps: Input should be greater than 0"),
    ({"n_views": [1, 2]}, "config.n_views.1: Input should be 1, 3, 6 or 9"),
])
def test_invalid_parameters_rejected_before_any_work(prefect_server, tmp_path, change, message):
    from prefect.exceptions import ParameterTypeError

    from flows.benchmark import dtu_benchmark
    from viewneti_core.config import deep_merge

    config = deep_merge(tiny_config(tmp_path / "run", ["http://127.0.0.1:9/none.zip"], tmp_path / "m"), change)
    with pytest.raises(ParameterTypeError) as err:  # Prefect's wrapper of the pydantic validation error
        dtu_benchmark(config=config)
    assert str(err.value).splitlines() == ["Flow run received invalid parameters:", f" - {message}"]
    assert not (tmp_path / "run").exists(), "nothing may be written before validation passed"


@pytest.mark.parametrize("missing", ["model", "lpips"])
def test_missing_model_or_lpips_weights_fail_before_data_preparation(prefect_server, tiny_model, tmp_path,
                                                                      monkeypatch, missing):
    """Preflight: the real run downloads ~100 GB and trains for hours before it loads the base model
    for fitting or the LPIPS backbone for evaluation; a missing one must stop it at the start."""
    from flows.benchmark import dtu_benchmark
    from viewneti_core.evaluation.metrics import VGG16_FILE

    model = tmp_path / "no-such-model" if missing == "model" else tiny_model
    config = tiny_config(tmp_path / "run", ["http://127.0.0.1:9/none.zip"], model)
    if missing == "lpips":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
        config["evaluation"]["lpips_weights"] = "pretrained"
    state = dtu_benchmark(config=config, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    expected = [str(model), "local diffusers directory"] if missing == "model" else [VGG16_FILE, "TORCH_HOME"]
    assert all(part in message for part in expected), message
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "pretrain").exists()


def test_per_scan_rejects_n_views_outside_protocol(prefect_server, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.per_scan import per_scan_flow

    with pytest.raises(ParameterTypeError) as err:
        per_scan_flow(scan=114, n_views=2, config=tiny_config(tmp_path / "run", ["x"], tmp_path / "m"))
    assert str(err.value).splitlines() == ["Flow run received invalid parameters:",
                                           " - n_views: Input should be 1, 3, 6 or 9"]
    assert not (tmp_path / "run").exists()


# ---- the benchmark on a Dask cluster of 2 "GPU" workers ---------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_run(prefect_server, archive_server, tiny_model, tmp_path_factory):
    """Run 1 with injected faults, then run 2 without: the shared state of the tests below."""
    from flows.benchmark import dtu_benchmark

    run_dir = tmp_path_factory.mktemp("bench") / "run"
    config = tiny_config(run_dir, archive_server.sources, tiny_model, camera_path=[16, 25, 3])
    # prefect_env: this fixture is module-scoped, so it points itself at the server (conftest does it per test)
    with prefect_env(prefect_server), pytest.MonkeyPatch.context() as env:  # undone when the fixture returns
        # Pin the code part of the cache keys: the default (a hash of the sources) would rightly invalidate
        # everything if someone edits viewneti_core between the two runs.
        env.setenv(CODE_VERSION_ENV, f"test-{time.time()}")
        # scan114-3view: crashes for good right after training step 1 (its checkpoint-1 exists);
        # scan21-3view: the first inference attempt fails (transient), the retry succeeds.
        env.setenv(FAIL_ITEMS_ENV, "scan114-3view@fit+1,scan21-3view@infer:once")
        t0 = time.monotonic()
        first = dtu_benchmark(config=config, return_state=True)
        first_s = time.monotonic() - t0
        env.delenv(FAIL_ITEMS_ENV)
        ledger = BenchmarkConfig.model_validate(config).ledger_dir
        after_first = executions(ledger)
        first_entries = read_ledger(ledger)
        crashed = run_dir / "items" / "scan114-3view"
        crashed_item = {"checkpoints": sorted(p.name for p in (crashed / "checkpoints").glob("checkpoint-*")),
                        "metrics": (crashed / "metrics.parquet").exists()}
        t0 = time.monotonic()
        second = dtu_benchmark(config=config, return_state=True)
        second_s = time.monotonic() - t0
    print(f"benchmark run 1 (with faults): {first_s:.0f} s, run 2 (resume): {second_s:.0f} s")
    return {"config": config, "run_dir": run_dir, "first": first, "second": second, "ledger": ledger,
            "after_first": after_first, "first_entries": first_entries, "archive_server": archive_server,
            "crashed_item": crashed_item}


def config_reusing(benchmark_run: dict, run_dir: Path, **top) -> dict:
    """A tiny config on the first benchmark's archives and model, with its view mapper given (no pretraining)."""
    model = Path(benchmark_run["config"]["fit"]["model"]["pretrained_model_name_or_path"])
    return tiny_config(run_dir, benchmark_run["archive_server"].sources, model,
                       pretrained_view_mapper=str(benchmark_run["run_dir"] / "pretrain"), **top)


def test_failed_item_is_named_and_the_others_finish(benchmark_run):
    state = benchmark_run["first"]
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "scan114-3view" in message and "1 of 4" in message
    for other in ("scan21-1view", "scan21-3view", "scan114-1view"):
        assert other not in message
    items = benchmark_run["run_dir"] / "items"
    done = benchmark_run["after_first"]
    for item in ("scan21-1view", "scan21-3view", "scan114-1view"):
        assert done[(item, "evaluate")] == 1
    # the transient inference failure was retried once and then succeeded
    attempts = [e for e in benchmark_run["first_entries"] if e["item"] == "scan21-3view" and e["task"] == "infer"]
    assert [e["status"] for e in attempts] == ["failed", "completed"]
    # the crashed item left its step-1 checkpoint behind but no metrics
    assert benchmark_run["crashed_item"] == {"checkpoints": ["checkpoint-1"], "metrics": False}
    for item in ("scan21-1view", "scan21-3view", "scan114-1view"):
        assert (items / item / "metrics.parquet").is_file()


def test_rerun_redoes_only_the_failed_item_and_resumes_its_training(benchmark_run):
    assert benchmark_run["second"].is_completed(), benchmark_run["second"].message
    before, after = benchmark_run["after_first"], executions(benchmark_run["ledger"])
    new = after - before
    assert set(new) == {("scan114-3view", "fit"), ("scan114-3view", "infer"), ("scan114-3view", "evaluate"),
                        ("data", "prepare"), ("test-bench", "aggregate")}, new
    assert all(count == 1 for count in new.values())
    resumed = [e for e in read_ledger(benchmark_run["ledger"]) if e["item"] == "scan114-3view" and e["task"] == "fit"]
    assert resumed[-1]["resumed_from"] == 1 and resumed[-1]["steps"] == 2


def test_gpu_tasks_never_overlap_on_a_worker_and_tables_are_written(benchmark_run):
    assert_one_gpu_task_per_worker(benchmark_run["ledger"])  # both runs (each had its own 2-worker cluster)
    first_run_workers = {e["worker_name"] for e in benchmark_run["first_entries"] if e["task"] in GPU_TASKS}
    assert first_run_workers == {"gpu-0", "gpu-1"}, "both GPU workers of the first run should have worked"
    report = benchmark_run["run_dir"] / "report"
    rows = pd.read_parquet(report / "metrics_all.parquet")
    assert sorted(rows["run"].unique()) == ["scan114-1view", "scan114-3view", "scan21-1view", "scan21-3view"]
    assert set(rows["protocol"]) == {"viewneti", "regnerf"} and set(rows["weights"]) == {"random"}
    assert set(rows["lpips_backbone"]) == {"random"}
    summary = pd.read_parquet(report / "summary.parquet")
    assert set(summary["n_views"]) == {1, 3}
    text = (report / "report.md").read_text()
    assert "RANDOM WEIGHTS" in text and "grid_seed0.png" in text and "psnr_per_scan.png" in text


def test_ui_artifacts_and_core_logs_reach_the_server(benchmark_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    flow_run_id = benchmark_run["second"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["test-bench-report", "test-bench-summary", "test-bench-progress"])))
        kinds = {a.key: a.type for a in artifacts}
        assert kinds == {"test-bench-report": "markdown", "test-bench-summary": "table",
                         "test-bench-progress": "progress"}
        progress = [a for a in artifacts if a.key == "test-bench-progress"]
        assert max(float(a.data) for a in progress) == 100.0
        run = client.read_flow_run(flow_run_id)
        assert run.name == "test-bench"
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        assert "fit-scan114-3view" in {t.name for t in task_runs}
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        assert any(log.name.startswith("viewneti_core") for log in logs), "viewneti_core logs must reach the run page"
        report = [a for a in artifacts if a.key == "test-bench-report" and a.flow_run_id == flow_run_id]
        first_run_id = benchmark_run["first"].state_details.flow_run_id
        pretraining = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["test-bench-pretrain-progress"])))
    assert len(report) == 1
    assert_inline_pictures(report[0].data, benchmark_run["run_dir"])
    # fan-out progress by stage: run 2 counts every stage of the 4 items; run 1 names its failed stages
    by_run = {a.flow_run_id: a for a in progress}
    assert set(by_run) >= {first_run_id, flow_run_id}
    assert by_run[flow_run_id].description.endswith("fit 4/4 · infer 4/4 · evaluate 4/4")
    # scan114-3view's fit failed for good, so its infer and evaluate never ran: 3 of 12 stage runs
    assert "fit 4/4 · infer 4/4 · evaluate 4/4 (3 stage run(s) failed or skipped)" in by_run[first_run_id].description
    # pretraining (run 1 only; run 2 found it cached) reported steps, the last loss and an ETA as it went
    [pretrain] = [a for a in pretraining if a.flow_run_id == first_run_id]
    assert float(pretrain.data) == 100.0 and pretrain.task_run_id is not None
    match = re.search(r"step (\d+)/(\d+) · loss ([0-9.]+) · ETA \d+m\d\ds", pretrain.description)
    steps = benchmark_run["config"]["pretrain"]["optim"]["max_train_steps"]
    assert match and int(match[1]) == int(match[2]) == steps, pretrain.description
    last = json.loads((benchmark_run["run_dir"] / "pretrain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert float(match[3]) == pytest.approx(last["loss"], abs=1e-4) and last["step"] == steps


def assert_inline_pictures(markdown: str, run_dir: Path) -> None:
    """The UI report embeds each plot, each item's first grid and its std maps as decodable, downscaled PNG
    data URIs, and each item's camera-path GIF as itself."""
    import base64
    import io

    from PIL import Image

    from tasks.reporting import GRID_MAX_SIDE, PICTURE_MAX_BYTES, PICTURES_BUDGET_BYTES, PLOT_MAX_SIDE

    found = dict(re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown))
    plots = sorted((run_dir / "report").glob("*.png"))
    items = [p for p in (run_dir / "items").iterdir() if p.is_dir()]  # beside them: each run's .NAME.lock
    grids = {item.name: next(item.rglob("grid_seed0.png")) for item in items}
    assert plots and len(grids) == 4
    expected = {p.stem: (p, PLOT_MAX_SIDE) for p in plots}
    expected |= {f"{item} grid_seed0": (grid, GRID_MAX_SIDE) for item, grid in grids.items()}
    spreads = {item.name: next(item.rglob("uncertainty_grid.png")) for item in items}
    expected |= {f"{item} std maps": (grid, GRID_MAX_SIDE) for item, grid in spreads.items()}  # 2 seeds rendered
    assert set(found) == set(expected), (sorted(found), sorted(expected))
    gifs = dict(re.findall(r"!\[([^\]]*) camera path\]\(data:image/gif;base64,([A-Za-z0-9+/=]+)\)", markdown))
    assert set(gifs) == set(grids)
    for item, encoded in gifs.items():
        [gif] = (run_dir / "items" / item).rglob("path_cam16_to_cam25_seed0.gif")
        assert base64.b64decode(encoded, validate=True) == gif.read_bytes()
        with Image.open(gif) as animation:
            assert animation.is_animated  # the camera path, not a still
    assert sum(len(b) for b in found.values()) <= PICTURES_BUDGET_BYTES
    for alt, encoded in found.items():
        png = base64.b64decode(encoded, validate=True)
        assert png.startswith(b"\x89PNG") and len(png) <= PICTURE_MAX_BYTES, alt
        source, max_side = expected[alt]
        with Image.open(source) as original, Image.open(io.BytesIO(png)) as shown:
            scale = min(1.0, max_side / max(original.size))
            assert shown.size == (round(original.width * scale), round(original.height * scale)), alt
            shown.load()


# ---- GPU slots shared by concurrent flow runs ---------------------------------------------------------------


def max_overlap(entries: list[dict]) -> int:
    """The most GPU-task executions that were running at one instant (from the ledgers' start/end times)."""
    edges = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_two_concurrent_runs_share_the_gpu_slots(benchmark_run, prefect_server, tmp_path):
    """Two `viewneti-pipeline run`s at once, each with its own local cluster of 2 "GPU" workers (4 workers):
    the CLI creates the global concurrency limit viewneti-gpu with the host's 2 slots, and the GPU tasks of
    both runs together never exceed them; both runs finish."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.runtime import GPU_LIMIT

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
    # a barrier: each run's scan21-1view fit, once it holds a GPU slot, waits until the other run's has one too,
    # so the two runs' GPU phases overlap by construction (not by timing)
    meet = tmp_path / "meet"
    env = dict(os.environ) | prefect_server.client_env() | {"VIEWNETI_DASK_WORKERS": "2", "PYTHONUNBUFFERED": "1",
                                                            CODE_VERSION_ENV: f"test-{time.time()}",
                                                            FAIL_ITEMS_ENV: "scan21-1view@fit:meet=2",
                                                            MEET_DIR_ENV: str(meet)}
    runs = {}
    try:
        for name in ("slots-a", "slots-b"):
            config = config_reusing(benchmark_run, tmp_path / name, name=name, test_scans=[21], n_views=[1, 3])
            (tmp_path / f"{name}.json").write_text(json.dumps(config))
            runs[name] = subprocess.Popen([sys.executable, "-m", "viewneti_cli.pipeline", "run", "--config", str(tmp_path / f"{name}.json")],
                                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = {name: process.communicate(timeout=600)[0] for name, process in runs.items()}
        with get_client(sync_client=True) as client:
            slots = client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)  # the other tests run without it
    for name, process in runs.items():
        assert process.returncode == 0, outputs[name][-3000:]
        assert f"share 2 slot(s) (global concurrency limit {GPU_LIMIT})" in outputs[name], outputs[name][-3000:]
    assert slots == 2
    by_run = {name: [e for e in read_ledger(tmp_path / name / "ledger") if e["task"] in GPU_TASKS] for name in runs}
    entries = [e for run in by_run.values() for e in run]
    assert len(entries) == 2 * 2 * 3 and all(e["status"] == "completed" for e in entries)
    # both fits met (each inside its slot), so the runs' GPU phases overlapped: 4 workers could have run 4 at
    # once, the limit let exactly its 2 slots run together
    assert len(list(meet.glob("*.json"))) == 2
    spans = [(min(e["start"] for e in run), max(e["end"] for e in run)) for run in by_run.values()]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    assert max_overlap(entries) == slots, sorted((e["start"], e["end"], e["item"], e["task"]) for e in entries)


# ---- a Dask worker lost mid-run ---------------------------------------------------------------------------


def test_worker_lost_mid_run_keeps_finished_results(benchmark_run, tmp_path, monkeypatch):
    """A worker process dies (os._exit) in the middle of an item's training: Dask's nanny restarts it,
    the scheduler re-runs the lost task, the item resumes from its last checkpoint, and nothing that had
    finished -- on the lost worker or elsewhere -- is executed again."""
    from flows.benchmark import dtu_benchmark

    config = config_reusing(benchmark_run, tmp_path / "run", name="worker-loss")
    monkeypatch.setenv(CODE_VERSION_ENV, f"test-{time.time()}")
    monkeypatch.setenv(FAIL_ITEMS_ENV, "scan114-3view@fit+1:kill")
    # One worker: every task before the kill ran on the worker that is lost, wherever Dask would have
    # placed them on two (with two, the killed fit could be a worker's first task, leaving nothing to check).
    monkeypatch.setenv("VIEWNETI_DASK_WORKERS", "1")
    state = dtu_benchmark(config=config, return_state=True)
    assert state.is_completed(), state.message

    ledger = BenchmarkConfig.model_validate(config).ledger_dir
    killed = json.loads((ledger / ".injected-scan114-3view-fit-1").read_text())
    with pytest.raises(ProcessLookupError):  # the worker process really is gone
        os.kill(killed["pid"], 0)
    entries = read_ledger(ledger)
    # The lost worker had finished work before it died (scan114-3view's fit is the last one submitted, so
    # it is not the worker's first task); Dask re-ran those lost in-memory results, and Prefect served them
    # from the results persisted under the run directory instead of executing them again (checked below).
    finished_on_lost = [f"{e['task']}:{e['item']}" for e in entries if e["pid"] == killed["pid"]]
    assert finished_on_lost, [(e["item"], e["task"], e["worker_name"], e["pid"]) for e in entries]
    # Every stage of every item completed exactly once: the killed attempt left no ledger entry (the
    # process died), and results finished before the loss were never recomputed.
    counts = Counter((e["item"], e["task"]) for e in entries if e["task"] in GPU_TASKS)
    assert counts == {(item, stage): 1 for item in ("scan21-1view", "scan21-3view", "scan114-1view", "scan114-3view")
                      for stage in ("fit", "infer", "evaluate")}, counts
    assert all(e["status"] == "completed" for e in entries)
    fit = next(e for e in entries if e["item"] == "scan114-3view" and e["task"] == "fit")
    assert fit["resumed_from"] == 1 and fit["steps"] == 2 and fit["pid"] != killed["pid"]
    assert_one_gpu_task_per_worker(ledger)
    rows = pd.read_parquet(tmp_path / "run" / "report" / "metrics_all.parquet")
    assert rows["run"].nunique() == 4


# ---- end to end through a deployment and a process worker ---------------------------------------------------


def _prefect(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def deployed(prefect_server) -> dict:
    """The process work pool, the GPU limit (2 slots) and every deployment of deployments/prefect.yaml,
    registered with the CLI; what it created on the server is deleted after the module."""
    env = dict(os.environ) | prefect_server.client_env() | {"VIEWNETI_DASK_WORKERS": "1",
                                                            "PREFECT_LOGGING_EXTRA_LOGGERS": "viewneti_core"}
    with prefect_env(prefect_server, cleanup=False):
        before = server_objects()
    # the deploy step as operators run it: work pool, GPU concurrency limit, automation, prefect deploy
    deployed = subprocess.run([sys.executable, "-m", "viewneti_cli.deploy", "--gpu-slots", "2"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "viewneti-gpu: 2 slot(s)" in deployed.stdout, deployed.stdout
    with prefect_env(prefect_server, cleanup=False):
        from prefect.client.orchestration import get_client

        from tasks.runtime import GPU_LIMIT

        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 2
    yield env
    with prefect_env(prefect_server, cleanup=False):  # the zombie automation and the event trigger's automation
        delete_created_since(before)


def _wait_for_final_state(client, run_id, timeout_s: float):
    deadline, state = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            break
        time.sleep(2)
    return state


def _deployment_run(config: dict, env: dict) -> str:
    started = _prefect("deployment", "run", "dtu-benchmark/demo", "--params", json.dumps({"config": config}),
                       env=env, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    return re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)


@pytest.mark.timeout(1800)  # three deployment scenarios in one test (one worker start instead of three)
def test_deployments_on_one_process_worker(benchmark_run, deployed, prefect_server, tmp_path):
    """Everything that needs a process worker, on one worker (one start instead of three):
    1. the server rejects bad parameters; a deployment run of the benchmark completes;
    2. pretrain-view-mapper TRAINS a view mapper (no mapper given), saves its config and emits
       viewneti.view-mapper.ready; the trigger of the on-view-mapper-ready deployment (created by
       `prefect deploy`) starts a run of that benchmark with the event's mapper, which the worker runs:
       every item fitted, rendered and scored, and no second pretraining;
    3. kill -9 of a running deployment's flow run and of the worker (a lost machine: nobody is left to
       report a state): its heartbeats stop, and the deploy step's automation marks it Crashed."""
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from flows.pretrain import pretrain_view_mapper_flow
    from viewneti_cli.deploy import HEARTBEAT_S, ZOMBIE_AFTER_S
    from viewneti_core.training.checkpoints import read_checkpoint_info

    env = deployed
    config = config_reusing(benchmark_run, tmp_path / "deployed", name="deployed-bench", test_scans=[21], n_views=[1])
    bad = _prefect("deployment", "run", "dtu-benchmark/demo", "--params",
                   json.dumps({"config": config | {"n_views": [2]}}), env=env, timeout=60)
    assert bad.returncode != 0 and "n_views" in (bad.stdout + bad.stderr), "the server must reject bad parameters"

    run_dir = tmp_path / "event"
    event_config = tiny_config(run_dir, benchmark_run["archive_server"].sources,
                               Path(benchmark_run["config"]["fit"]["model"]["pretrained_model_name_or_path"]),
                               name="event-bench", test_scans=[21], n_views=[1, 3])
    zombie = config_reusing(benchmark_run, tmp_path / "zombie", name="zombie-bench", test_scans=[21], n_views=[1])
    zombie["fit"]["optim"]["max_train_steps"] = 100_000  # still training when it is killed

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "viewneti-process",
                               "--limit", "1"], cwd=REPO, env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    log_tail = lambda: (tmp_path / "worker.log").read_text()[-3000:]  # noqa: E731
    try:
        with get_client(sync_client=True) as client:
            # 1. a deployment run
            state = _wait_for_final_state(client, _deployment_run(config, env), 420)
            assert state is not None and state.is_completed(), f"{state}\n" + log_tail()

            # 2. a trained view mapper's event triggers the benchmark with it
            mapper = pretrain_view_mapper_flow(config=event_config)
            info = read_checkpoint_info(Path(mapper["checkpoint"]))
            assert info["learnable_mode"] == 3 and info["step"] == 2, info  # trained here, 2 steps
            saved = json.loads((run_dir / "benchmark-config.json").read_text())
            assert saved["name"] == "event-bench" and saved["test_scans"] == [21] and saved["n_views"] == [1, 3]
            deployment = client.read_deployment_by_name("dtu-benchmark-with-view-mapper/on-view-mapper-ready")
            runs_filter = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
            deadline, triggered, event_state = time.monotonic() + 480, [], None
            while time.monotonic() < deadline:
                triggered = [r for r in client.read_flow_runs(flow_run_filter=runs_filter)
                             if r.parameters.get("view_mapper") == mapper["checkpoint"]]
                event_state = client.read_flow_run(triggered[0].id).state if triggered else None
                if event_state is not None and event_state.is_final():
                    break
                time.sleep(2)
            assert len(triggered) == 1, f"no benchmark run was triggered for {mapper['checkpoint']}"
            assert triggered[0].parameters["config_file"] == str(run_dir / "benchmark-config.json")
            assert event_state is not None and event_state.is_completed(), f"{event_state}\n" + log_tail()

            # 3. kill -9 of a running flow run and its worker
            run_id = _deployment_run(zombie, env)
            deadline, state = time.monotonic() + 240, None
            while time.monotonic() < deadline:
                state = client.read_flow_run(run_id).state
                if state is not None and (state.is_running() or state.is_final()):
                    break
                time.sleep(1)
            assert state is not None and state.is_running(), f"{state}\n" + log_tail()
            # the automation reacts to a flow run whose heartbeats stop: wait until the server has its first one.
            # Its own deadline: the wait for Running may have used most of the one above, and the run sends its
            # first heartbeat on entering Running and then one a period (so a lost first one costs a period).
            # A filter per query: an EventFilter's `occurred.until` defaults to the moment it is built, so one
            # built once never sees a heartbeat sent after it (the test failed whenever the first one came late).
            def heartbeats() -> list:
                return client.read_events(filter=EventFilter(
                    event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                    resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=1).events

            first_heartbeat_s = 2 * HEARTBEAT_S + 60
            deadline = time.monotonic() + first_heartbeat_s
            while time.monotonic() < deadline and not heartbeats():
                time.sleep(1)
            if not heartbeats():
                # Which side lost it: the run's other events persisted (its state changes) mean its process sent
                # no heartbeat; none at all mean the server's event persister is behind (see the server's log).
                own = EventFilter(resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]))
                seen = sorted({e.event for e in client.read_events(filter=own, limit=50).events})
                pytest.fail(f"no heartbeat event from the flow run in {first_heartbeat_s} s of it running; its "
                            f"persisted events: {seen}\nworker log:\n{log_tail()}\nserver log:\n"
                            + prefect_server.log_file.read_text(errors="replace")[-3000:])
            family = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
            for process in family:  # the worker first: it would otherwise report the crash itself
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            killed_at = time.monotonic()
            bound = ZOMBIE_AFTER_S + HEARTBEAT_S + 60  # the last heartbeat may be a period old; the check's cadence
            state = _wait_for_final_state(client, run_id, bound)
            crashed_after = time.monotonic() - killed_at
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=30)
        worker_log.close()

    report = tmp_path / "deployed" / "report"
    assert pd.read_parquet(report / "metrics_all.parquet")["run"].unique().tolist() == ["scan21-1view"]
    assert (report / "summary.parquet").is_file() and "scan21-1view" in (report / "report.md").read_text()
    rows = pd.read_parquet(run_dir / "report" / "metrics_all.parquet")
    assert sorted(rows["run"].unique()) == ["scan21-1view", "scan21-3view"]
    entries = read_ledger(BenchmarkConfig.model_validate(event_config).ledger_dir)
    done = {(e["item"], e["task"]) for e in entries if e["status"] == "completed"}
    assert {(item, stage) for item in ("scan21-1view", "scan21-3view") for stage in ("fit", "infer", "evaluate")} <= done
    # one pretraining: the flow's; the triggered run used the event's mapper
    assert [e["status"] for e in entries if e["task"] == "pretrain"] == ["completed"]
    assert state is not None and state.is_crashed(), f"{state} after {crashed_after:.0f} s"
    assert "No heartbeat" in (state.message or ""), state.message
    print(f"killed flow run Crashed {crashed_after:.0f} s after kill -9 (bound {bound} s)")


# ---- execution.cluster: a Dask cluster class from the configuration -------------------------------------------


def _local_cluster(**kwargs) -> dict:
    return {"class": "distributed.LocalCluster",
            "kwargs": {"n_workers": 1, "threads_per_worker": 2, "host": "127.0.0.1", "dashboard_address": None,
                       **kwargs}}


def test_cluster_class_from_the_config_runs_the_benchmark(prefect_server, archive_server, tiny_model, tmp_path):
    """`execution.cluster: {class: distributed.LocalCluster, kwargs: ...}` is what prefect-dask starts: the
    GPU tasks run on that cluster's worker (LocalCluster names it "0"), not on the default gpu-N workers."""
    from flows.benchmark import dtu_benchmark

    config = tiny_config(tmp_path / "run", archive_server.sources, tiny_model, name="cluster-class",
                         test_scans=[21], n_views=[1])
    config["execution"]["cluster"] = _local_cluster(resources={"GPU": 1})
    state = dtu_benchmark(config=config, return_state=True)
    assert state.is_completed(), state.message
    entries = read_ledger(BenchmarkConfig.model_validate(config).ledger_dir)
    gpu = [e for e in entries if e["task"] in GPU_TASKS]
    assert sorted(e["task"] for e in gpu) == ["evaluate", "fit", "infer", "pretrain"]
    assert {e["worker_name"] for e in gpu} == {"0"}, {e["worker_name"] for e in gpu}
    assert pd.read_parquet(tmp_path / "run" / "report" / "metrics_all.parquet")["run"].unique().tolist() == ["scan21-1view"]


@pytest.mark.parametrize(("cluster", "message"), [
    # LocalCluster takes **worker_kwargs, so only starting it finds the typo
    (_local_cluster(resources={"GPU": 1}, nthreadz=2), "execution.cluster: starting distributed.LocalCluster"),
    (_local_cluster(), "declares a 'GPU' resource, so GPU tasks would wait forever"),
    ({"address": "tcp://127.0.0.1:9"}, "execution.cluster: starting the scheduler at tcp://127.0.0.1:9 failed"),
])
def test_cluster_that_cannot_start_fails_the_run_before_any_work(prefect_server, tmp_path, cluster, message):
    import dask

    from flows.benchmark import dtu_benchmark

    config = tiny_config(tmp_path / "run", ["http://127.0.0.1:9/none.zip"], tmp_path / "m")
    config["execution"]["cluster"] = cluster
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):  # the closed port: fail in seconds
        state = dtu_benchmark(config=config, return_state=True)
    assert state.is_failed()
    assert message in str(state.result(raise_on_failure=False))
    assert time.monotonic() - t0 < 90
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "ledger").exists()


# ---- an unreachable archive host ------------------------------------------------------------------------------


def _seconds_to_fail(url: str) -> float:
    """How long one request to an unreachable `url` takes to fail here (DNS or a refused connection)."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    with contextlib.suppress(urllib.error.URLError, OSError):
        urllib.request.urlopen(url, timeout=60).close()
    return time.monotonic() - start


@pytest.mark.parametrize("host", ["dns", "refused"])
def test_unreachable_archive_host_fails_once_with_one_message(prefect_server, tiny_model, tmp_path, host):
    """A name that does not resolve or a refused connection is permanent after two quick tries: one
    prepare attempt (not 3 task attempts x 6 downloads), and the flow's message is the download's."""
    import socket

    from flows.benchmark import dtu_benchmark
    from viewneti_core.data.download import UNREACHABLE_TRIES

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = "http://nonexistent.invalid/Rectified.zip" if host == "dns" else f"http://127.0.0.1:{port}/Rectified.zip"
    config = tiny_config(tmp_path / "run", [url], tiny_model)
    config["execution"] = {"retries": 2, "retry_delay_s": 5}
    state = dtu_benchmark(config=config, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith(f"cannot download {url}: ") and message.endswith("(2 tries)"), message
    assert "bytes are kept" not in message
    attempts = [e for e in read_ledger(BenchmarkConfig.model_validate(config).ledger_dir) if e["task"] == "prepare"]
    assert [e["status"] for e in attempts] == ["failed"], "a permanent error must not be retried"
    # Two quick tries, not minutes of backoff. How long a name takes to fail depends on this machine's
    # resolver (seconds where there is no network), so that time, measured here, is part of the bound.
    assert attempts[0]["end"] - attempts[0]["start"] < 10 + UNREACHABLE_TRIES * _seconds_to_fail(url), attempts
    assert attempts[0]["error"].startswith("HostUnreachableError: ")
