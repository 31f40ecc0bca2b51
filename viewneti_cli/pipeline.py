"""`viewneti-pipeline`: the Prefect + Dask pipeline from the command line.

    viewneti-pipeline demo                      # zero-config end-to-end demo (local server + UI, synthetic DTU)
    viewneti-pipeline run --config configs/dtu_benchmark.yaml [--section.key value ...]
    viewneti-pipeline server start|stop|status  # the local Prefect server (SQLite in ./.prefect)
    viewneti-pipeline config show --config FILE # the validated benchmark configuration

Prefect is imported only after the environment (PREFECT_HOME, PREFECT_API_URL) is set, so the flows
talk to the local server and never to a per-process ephemeral one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flows.local_services import DEFAULT_PORT, LocalServiceError, PrefectServer, StaticFileServer

DEFAULT_HOME = Path(".prefect")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # any working directory
DEMO_OUT = Path("outputs/pipeline-demo")
DEMO_PRETRAIN_SCANS = (3, 4, 5)
DEMO_TEST_SCANS = (21, 114)
DEMO_IMAGE_SIZE = (64, 48)


def _print(message: str = "") -> None:
    print(message, flush=True)


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("VIEWNETI_PREFECT_HOME", DEFAULT_HOME)),
                        help="PREFECT_HOME of the local server: its SQLite database and logs (default ./.prefect)")
    parser.add_argument("--port", type=int, default=None, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")


def _use_server(server: PrefectServer) -> None:
    """Point this process and its children (Dask workers) at `server`."""
    os.environ.update(server.client_env())
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "viewneti_core")


def _local_server(args: argparse.Namespace) -> PrefectServer | None:
    if os.environ.get("PREFECT_API_URL") and not args.local_server:
        _print(f"using the Prefect API at {os.environ['PREFECT_API_URL']} (PREFECT_API_URL)")
        return None
    _print(f"starting (or reusing) the local Prefect server, PREFECT_HOME={args.home.absolute()} ...")
    server = PrefectServer.start_or_reuse(args.home, args.port, ui=True)
    _print(f"Prefect UI: {server.ui_url}")
    _use_server(server)
    return server


# ---- demo ------------------------------------------------------------------------------------------------


def ensure_demo_inputs(out: Path) -> Path:
    """The mini world's synthetic DTU archives under `out` (written once, reused afterwards)."""
    from viewneti_core.data.synthetic import make_synthetic_dtu, write_archives
    from viewneti_core.mini_world.world import SIZE, WORLD_SEED, scene

    archives = out / "synthetic" / "archives"
    if not all((archives / f"{name}.zip").is_file() for name in ("Rectified", "SampleSet", "idrmasks")):
        tree = out / "synthetic" / "tree"
        _print(f"writing mini-world DTU scans {list(DEMO_PRETRAIN_SCANS + DEMO_TEST_SCANS)} and their archives ...")
        make_synthetic_dtu(tree, DEMO_PRETRAIN_SCANS + DEMO_TEST_SCANS, size=SIZE, seed=WORLD_SEED, lights=[3],
                           progress=False, overwrite=True, scene_of=scene)
        write_archives(tree, archives)
    return archives


def cmd_demo(args: argparse.Namespace) -> int:
    from viewneti_core.mini_world.world import NOTE

    started = time.monotonic()
    out = args.out.absolute()
    server = _local_server(args)
    archives = ensure_demo_inputs(out)
    with StaticFileServer(archives, port=args.archive_port) as files:
        sources = [files.url(f"{name}.zip") for name in ("Rectified", "SampleSet", "idrmasks")]
        _print(f"serving the synthetic DTU archives at http://127.0.0.1:{files.port}/")
        config = _load(args.config, demo_overrides(out, sources), args.overrides)
        code = _run_benchmark(config, server)
    _print(f"demo finished in {time.monotonic() - started:.0f} s ({NOTE}; LPIPS backbone random)")
    return code


def demo_overrides(out: Path, sources: list[str]) -> dict:
    """What `demo` sets on top of configs/demo.yaml: its output dir and the archive URLs."""
    return {
        "run_dir": str(out / "benchmark"),
        "data": {"sources": sources, "root": str(out / "benchmark" / "data" / "dtu"),
                 "cache_dir": str(out / "downloads")},
    }


def _load(path: Path | None, base: dict, cli_overrides: Sequence[str]):
    from flows.params import BenchmarkConfig, load_benchmark_config
    from viewneti_core.config import deep_merge, parse_overrides

    return load_benchmark_config(path, deep_merge(base, parse_overrides(cli_overrides, BenchmarkConfig)))


def _run_benchmark(config, server: PrefectServer | None) -> int:
    from flows.benchmark import dtu_benchmark
    from flows.cluster import ADDRESS_ENV, ensure_gpu_limit, local_gpu_slots
    from flows.console import shorten_console_errors
    from flows.zombie_runs import crash_marking

    shorten_console_errors()
    _print(f"running dtu-benchmark '{config.name}': {len(config.items)} items, run dir {config.run_dir}")
    if config.execution.cluster.is_local and not os.environ.get(ADDRESS_ENV):  # this host's GPUs
        from tasks.runtime import GPU_LIMIT

        _print(f"GPU tasks of all runs on this server share {ensure_gpu_limit(local_gpu_slots())} slot(s) "
               f"(global concurrency limit {GPU_LIMIT})")
    failed = None
    try:
        with crash_marking() as crash_note:
            _print(crash_note)
            state = dtu_benchmark(config=config, return_state=True)
        result = state.result(raise_on_failure=False)
        if state.is_failed():
            failed = str(result) if isinstance(result, BaseException) else (state.message or "failed")
    except Exception as exc:  # noqa: BLE001 - reported below
        failed = f"{type(exc).__name__}: {exc}"
    if failed:  # the cause first, then whatever was written before it
        _print(f"\nthe benchmark FAILED: {failed}")
    _summarize_outputs(config.resolved(), server)
    return 1 if failed else 0


def _summarize_outputs(config, server: PrefectServer | None) -> None:
    """The outputs that exist (a failed run lists only what it wrote before failing)."""
    report = config.report_dir
    outputs = [(label, path) for label, path in [
        ("all metric rows (Parquet)", report / "metrics_all.parquet"),
        ("summary table (Parquet)", report / "summary.parquet"),
        ("summary table (CSV)", report / "summary.csv"),
        ("paper-style table (Markdown)", report / "summary.md"),
        ("report (Markdown)", report / "report.md"),
    ] if path.exists()]
    outputs += [("plot", plot) for plot in sorted(report.glob("*.png"))]
    items = sorted(config.items_dir.glob("scan*-*view/metrics.parquet")) if config.items_dir.is_dir() else []
    if items:
        outputs.append(("per-item tables", f"{config.items_dir}/scan*-*view/metrics.parquet ({len(items)})"))
    _print("\noutputs:" if outputs else "\nno outputs were written")
    for label, path in outputs:
        _print(f"  {label:30s} {path}")
    if server is not None:
        artifacts = (f"; artifacts: {config.name}-report, {config.name}-summary, {config.name}-progress"
                     if (report / "report.md").exists() else "")
        _print(f"\nPrefect UI: {server.ui_url}  (flow run '{config.name}'{artifacts})")
        _print("stop the server with: viewneti-pipeline server stop")


def cmd_demo_inputs(args: argparse.Namespace) -> int:
    """For the `dtu-benchmark/demo` deployment: build the inputs, serve the archives until Ctrl-C."""
    archives = ensure_demo_inputs(args.out.absolute())
    with StaticFileServer(archives, port=args.archive_port) as files:
        _print(f"serving {archives} at http://127.0.0.1:{files.port}/ (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


# ---- run / server / config --------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    server = _local_server(args)
    config = _load(args.config, {}, args.overrides)
    return _run_benchmark(config, server)


def cmd_server(args: argparse.Namespace) -> int:
    home = args.home.absolute()
    running = PrefectServer.running(home)
    if args.action == "status":
        _print(f"running: {running.ui_url} (pid {running.pid})" if running else f"no server running for {home}")
        return 0 if running else 1
    if args.action == "stop":
        if running is None:
            _print(f"no server running for {home}")
            return 0
        running.stop()
        _print(f"stopped the Prefect server (pid {running.pid})" if running.pid else "stopped the Prefect server")
        return 0
    server = PrefectServer.start_or_reuse(home, args.port, ui=True)
    _print(f"Prefect UI: {server.ui_url}\nfor other shells: export PREFECT_API_URL={server.api_url}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    config = _load(args.config, {}, args.overrides)
    if args.params:  # for `prefect deployment run 'dtu-benchmark/full' --params "$(...)"`
        import json

        _print(json.dumps({"config": config.model_dump(mode="json")}))
        return 0
    _print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewneti-pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="end-to-end dtu-benchmark demo on the embedded default (< 10 min on CPU)")
    demo.add_argument("--config", type=Path, default=DEMO_CONFIG)
    demo.add_argument("--out", type=Path, default=DEMO_OUT, help="where everything of the demo goes")
    demo.add_argument("--archive-port", type=int, default=0, help="port of the archive server (default: any free)")
    demo.add_argument("--local-server", action="store_true", default=True, help=argparse.SUPPRESS)
    _server_args(demo)
    demo.set_defaults(func=cmd_demo)

    inputs = commands.add_parser("demo-inputs", help="build the demo inputs and serve the archives on 127.0.0.1 "
                                 "(for the dtu-benchmark/demo deployment)")
    inputs.add_argument("--out", type=Path, default=DEMO_OUT)
    inputs.add_argument("--archive-port", type=int, default=8765)
    inputs.set_defaults(func=cmd_demo_inputs)

    run = commands.add_parser("run", help="run dtu-benchmark with a config file (local Dask cluster)")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--local-server", action="store_true",
                     help="start/reuse the local server even when PREFECT_API_URL is set")
    _server_args(run)
    run.set_defaults(func=cmd_run)

    server = commands.add_parser("server", help="the local Prefect server (UI on 127.0.0.1)")
    server.add_argument("action", choices=["start", "stop", "status"])
    _server_args(server)
    server.set_defaults(func=cmd_server)

    config = commands.add_parser("config", help="print the validated benchmark configuration")
    config.add_argument("action", choices=["show"])
    config.add_argument("--config", type=Path, default=None)
    config.add_argument("--params", action="store_true",
                        help="print it as the JSON parameters of a dtu-benchmark deployment run ({\"config\": ...})")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # full tracebacks instead of one line (anywhere on the command line)
    args, extra = parser.parse_known_args([arg for arg in argv if arg != "--debug"])
    args.overrides = extra
    try:
        from viewneti_core.config import ConfigError
        from viewneti_core.errors import ArtifactError, describe_os_error

        try:
            return args.func(args)
        except (ConfigError, ArtifactError) as exc:
            if debug:
                raise
            _print(f"error: {exc}")
            return 2
        except OSError as exc:  # a full disk, a name too long: the path and the reason, not a traceback
            if debug:
                raise
            _print(f"error: {describe_os_error(exc)}\n(run with --debug for the traceback)")
            return 2
    except LocalServiceError as exc:
        _print(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _print("interrupted; re-running the same command continues where it stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
