"""The `viewneti` command. Subcommands that take a config accept dotted overrides after their flags,
e.g. `viewneti demo --config configs/core_demo.yaml --eval.seeds [0,1] --run.device cpu`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from viewneti_core.config import ConfigError, dump_config, load_config
from viewneti_core.errors import ModelNotFoundError, PromptError, RunInUseError, describe_os_error

CORE_DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "core_demo.yaml"  # any working directory


def _config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", type=Path, default=default, help="YAML config file")
    parser.epilog = "Any further --section.key VALUE pairs override the config (e.g. --optim.max_train_steps 3000)."


def _cmd_config_show(args: argparse.Namespace, overrides: list[str]) -> int:
    print(dump_config(load_config(args.config, overrides)), end="")
    return 0


def _cmd_make_model(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.base_model.sd_models import build_components, save_components

    builder = "tiny" if args.command == "make-tiny" else "sd21-random"
    out = save_components(build_components(builder, seed=args.seed), args.out, builder=builder)
    print(f"wrote the {builder} model (RANDOM WEIGHTS) in diffusers format to {out}")
    return 0


def _cmd_build_mini_world(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.mini_world.build import run_build

    return run_build(args)


def _cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.demo import run_demo

    config = load_config(args.config, overrides)
    result = run_demo(config, args.out)
    record = result.record or {}
    if record.get("weights") == "random":
        print(f"\nViewNeTI demo finished in {result.seconds:.1f} s (RANDOM WEIGHTS: images are not benchmark quality)")
    else:
        print(f"\nViewNeTI demo finished in {result.seconds:.1f} s ({record['note']})")
        print(f"  fitted mode {config.learnable_mode} on held-out scan {record['scan']} from views "
              f"{record['input_views']} ({record['fit_steps']} steps); novel test views: "
              f"PSNR {record['novel_view_psnr']:.2f} dB, SSIM {record['novel_view_ssim']:.3f}")
    print(f"  images:  {result.images[0].parent if result.images else result.out_dir} ({len(result.images)} files)")
    for grid in result.grids:
        print(f"  grid:    {grid}")
    if result.gif is not None:
        print(f"  camera path (cameras {record['camera_path'][0]} -> {record['camera_path'][1]}, animated): {result.gif}")
    print(f"  summary: {result.summary}")
    return 0


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    import os

    from viewneti_core.run_lock import hold_run_lock

    config = load_config(args.config, overrides)
    # The run directory's lock first, before torch is imported: a second run of it fails in a second.
    with hold_run_lock(Path(config.log.exp_dir) / config.log.exp_name, enabled=int(os.environ.get("RANK", "0")) == 0):
        from viewneti_core.base_model.sd_models import weights_note
        from viewneti_core.training.trainer import train

        result = train(config, resume=args.resume)
    label = " (RANDOM-WEIGHT base model: not benchmark quality)" if result.weights == "random" else ""
    label = label or (f" ({weights_note(result.weights)})" if weights_note(result.weights) else "")
    print(f"trained {result.steps} steps{label}; last checkpoint: {result.final_checkpoint}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_infer(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.inference import run_inference

    path = tuple(args.camera_path) if args.camera_path else None
    result = run_inference(
        args.run_dir, step=args.step, seeds=args.seeds, views=args.views, object_token=args.token,
        out_dir=args.out, camera_path=path, base_model=args.model, overrides=overrides,
    )
    label = " (RANDOM WEIGHTS: not benchmark quality)" if result.weights == "random" else ""
    print(f"rendered step {result.step}{label} -> {result.out_dir}")
    for grid in result.grids:
        print(f"  grid: {grid}")
    if result.gif:
        print(f"  camera path: {result.gif}")
    return 0


def _cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.inference import load_cameras_arg, run_generate

    config = load_config(args.config, overrides)
    cameras = load_cameras_arg(args.cameras, args.camera_root)
    paths = run_generate(args.view_mapper, args.prompt, cameras, args.seeds, args.out, args.model, config)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


def _cmd_make_synthetic(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.data.synthetic import run_make_synthetic

    return run_make_synthetic(args)


def _cmd_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.data.prepare import run_prepare

    return run_prepare(args)


def _cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.evaluation.scoring import evaluate_predictions

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    out = evaluate_predictions(
        args.predictions, args.out, protocols=protocols, device=args.device, lpips_weights=args.lpips,
        run_name=args.run_name, data_root=args.data_root, uncertainty=args.uncertainty,
    )
    print(f"wrote per-image metrics ({', '.join(protocols)}) to {out}")
    _print_spread(out)
    return 0


def _print_spread(table: Path) -> None:
    """One line on the columns across seeds: where the std maps are, or why there are none."""
    import pyarrow.parquet as pq

    rows = pq.read_table(table, columns=["uncertainty_seeds", "uncertainty_note", "predictions"]).to_pylist()
    seeds = max((r["uncertainty_seeds"] for r in rows), default=0)
    if seeds >= 2:
        print(f"diversity, ensemble, best-of-{seeds} and calibration columns added; std maps (std_camNN.png, "
              f"uncertainty_grid.png) in {rows[0]['predictions']}")
    else:
        print(f"no columns across seeds: {rows[0]['uncertainty_note'] if rows else 'no rows'}")


def _cmd_summarize(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.evaluation.summary import summarize

    result = summarize(args.tables, args.out)
    label = " (RANDOM WEIGHTS: not benchmark quality)" if result.random_weights else ""
    print(f"summarised {result.n_groups} groups{label}:")
    extra = [result.uncertainty, result.uncertainty.with_suffix(".csv")] if result.uncertainty else []
    for path in (result.markdown, result.csv, result.table, *extra, *result.plots):
        print(f"  {path}")
    return 0


def _cmd_import_original(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.training.original_checkpoints import import_original

    result = import_original(args.checkpoint, args.out, dtu_root=args.dtu_root, calibration=args.calibration,
                             step=args.step, base_model=args.model, overrides=overrides)
    print(f"imported the original mode-{result.learnable_mode} checkpoint(s) of step(s) {result.steps} "
          f"(base model {result.base_model}) -> {result.out_dir}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewneti", description="Viewpoint Neural Textual Inversion (ViewNeTI)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and full tracebacks of errors (also: --debug anywhere)")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    demo = groups.add_parser("demo", help="sample view-conditioned images on the embedded default (tiny model)")
    _config_args(demo, default=CORE_DEMO_CONFIG)
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output directory")
    demo.set_defaults(handler=_cmd_demo, takes_overrides=True)

    train = groups.add_parser("train", help="train mappers (learnable modes 0, 2, 3, 4, 5)")
    _config_args(train)
    train.add_argument("--resume", default=None, help="'latest', a step number or a checkpoint directory")
    train.set_defaults(handler=_cmd_train, takes_overrides=True)

    infer = groups.add_parser("infer", help="render novel views of a trained run over seeds")
    infer.add_argument("--run-dir", type=Path, required=True)
    infer.add_argument("--step", default="latest", help="checkpoint step or 'latest'")
    infer.add_argument("--seeds", type=_int_list, default=None, help="e.g. 0,1,2 (default: eval.seeds of the run)")
    infer.add_argument("--views", type=_int_list, default=None, help="DTU camera indices (default: the 34 eval views)")
    infer.add_argument("--token", default=None, help="object token to render (mode 3: e.g. '<scan8>')")
    infer.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/inference/step-N")
    infer.add_argument("--model", default=None,
                       help="base model to check against: refuse a run that was trained on another one")
    infer.add_argument("--camera-path", type=int, nargs=3, metavar=("FROM", "TO", "FRAMES"),
                       help="also render a GIF along a path between two DTU cameras")
    infer.epilog = ("Any further --run.KEY / --eval.KEY VALUE pairs override the run's saved config "
                    "(e.g. --run.dtype float32 --eval.eval_batch_size 16).")
    infer.set_defaults(handler=_cmd_infer, takes_overrides=True)

    generate = groups.add_parser("generate", help="view-controlled text-to-image with a pretrained view mapper")
    _config_args(generate)
    generate.add_argument("--view-mapper", required=True, help="run dir, checkpoint dir, mapper file or registry name")
    generate.add_argument("--prompt", required=True, help='must contain <view>, e.g. "<view>. A photo of a teddy bear"')
    generate.add_argument("--cameras", required=True, help="DTU camera indices (with --camera-root) or a JSON file")
    generate.add_argument("--camera-root", type=Path, default=None, help="DTU tree whose cameras the indices refer to")
    generate.add_argument("--seeds", type=_int_list, default=[0])
    generate.add_argument("--model", default=None, help="base model (default: the one the view mapper was trained on)")
    generate.add_argument("--out", type=Path, default=Path("outputs/generate"))
    generate.set_defaults(handler=_cmd_generate, takes_overrides=True)

    evaluate = groups.add_parser("evaluate", help="DTU metrics (PSNR, SSIM, LPIPS) of a predictions directory")
    evaluate.add_argument("--predictions", type=Path, required=True, help="directory written by `viewneti infer`")
    evaluate.add_argument("--out", type=Path, default=None, help="Parquet file (default: PREDICTIONS/metrics.parquet)")
    evaluate.add_argument("--protocols", default="viewneti,regnerf", help="comma-separated: viewneti, regnerf")
    evaluate.add_argument("--device", default="cpu", help="torch device for the metrics, e.g. cpu or cuda")
    evaluate.add_argument("--lpips", choices=("pretrained", "random", "none"), default="pretrained",
                          help="LPIPS VGG backbone: pretrained (torch hub cache), random (tests only), none (skip)")
    evaluate.add_argument("--data-root", type=Path, default=None, help="DTU tree (default: the one the run used)")
    evaluate.add_argument("--run-name", default=None, help="run label in the table (default: the run dir's name)")
    evaluate.add_argument("--uncertainty", action=argparse.BooleanOptionalAction, default=None,
                          help="per-view diversity, ensemble, best-of-N, std maps and AUSE across the seeds "
                               "(default: on when the predictions hold 2 or more seeds)")
    evaluate.set_defaults(handler=_cmd_evaluate, takes_overrides=False)

    summarize = groups.add_parser("summarize", help="paper-style summary table and plots from evaluation tables")
    summarize.add_argument("--tables", type=Path, nargs="+", required=True, help="Parquet files from `evaluate`")
    summarize.add_argument("--out", type=Path, required=True, help="output directory")
    summarize.set_defaults(handler=_cmd_summarize, takes_overrides=False)

    imported = groups.add_parser("import-original", help="convert the original code's released checkpoints "
                                 "(restricted unpickling: no pickled code runs)")
    imported.add_argument("--checkpoint", type=Path, required=True,
                          help="an original run directory or one mapper-steps-N_{view,object}.pt file")
    imported.add_argument("--out", type=Path, required=True, help="new run directory (must not exist or be empty)")
    cameras = imported.add_mutually_exclusive_group()
    cameras.add_argument("--dtu-root", type=Path, default=None,
                         help="DTU tree: camera ranges of a view mapper, and the data `infer` uses (needed for runs)")
    cameras.add_argument("--calibration", type=Path, default=None,
                         help="DTU Calibration/cal18 folder: enough for a view mapper alone")
    imported.add_argument("--step", type=int, default=None, help="import only this step (default: every step found)")
    imported.add_argument("--model", default=None,
                          help="base model to record (default: the files' model.pretrained_model_name_or_path)")
    imported.epilog = "Any further --section.key VALUE pairs override the imported run's config (e.g. --eval.seeds [0,1])."
    imported.set_defaults(handler=_cmd_import_original, takes_overrides=True)

    config = groups.add_parser("config", help="inspect configurations").add_subparsers(dest="command", required=True)
    show = config.add_parser("show", help="print the validated config (defaults + file + overrides)")
    _config_args(show)
    show.set_defaults(handler=_cmd_config_show, takes_overrides=True)

    models = groups.add_parser("models", help="build models without downloads").add_subparsers(
        dest="command", required=True
    )
    for name, text in (("make-tiny", "tiny SD-shaped model"), ("make-sd21-random", "full SD 2.1 architecture")):
        sub = models.add_parser(name, help=f"save a {text} with random weights in diffusers format")
        sub.add_argument("--out", type=Path, required=True, help="target directory (must not exist or be empty)")
        sub.add_argument("--seed", type=int, default=0)
        sub.set_defaults(handler=_cmd_make_model, takes_overrides=False)
    build = models.add_parser("build-mini-world", help="train the mini world's base model and view mapper from "
                              "scratch on synthetic scenes (about 90 minutes on 2 CPU cores; resumable)")
    from viewneti_core.mini_world.options import add_build_arguments

    add_build_arguments(build)
    build.set_defaults(handler=_cmd_build_mini_world, takes_overrides=False)

    bench = groups.add_parser("bench", add_help=False, help="speed benchmarks, ours vs reference-style "
                              "(`viewneti bench --help`; the same as `python -m bench`)")
    bench.set_defaults(handler=_cmd_bench, takes_overrides=True)

    data = groups.add_parser("data", help="DTU data: synthetic scenes and preparation").add_subparsers(
        dest="command", required=True, parser_class=_LazyArgumentsParser
    )
    _add_data_command(data, "make-synthetic", "write synthetic DTU-format scenes", "viewneti_core.data.synthetic",
                      "add_make_synthetic_arguments", _cmd_make_synthetic)
    _add_data_command(data, "prepare", "download/extract/validate DTU scans into a normalised tree",
                      "viewneti_core.data.prepare",
                      "add_prepare_arguments", _cmd_prepare)
    return parser


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    from bench.__main__ import main as bench_main  # bench/ ships with the project, outside the library

    return bench_main(rest)


class _LazyArgumentsParser(argparse.ArgumentParser):
    """A subcommand parser that adds its arguments only when it is used: the modules that define them
    import torch and pandas, which `viewneti --help` and the other commands must not wait for."""

    def __init__(self, *args, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _ensure_arguments(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ensure_arguments()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._ensure_arguments()
        return super().format_usage()

    def format_help(self) -> str:
        self._ensure_arguments()
        return super().format_help()


def _add_data_command(subparsers, name: str, text: str, module: str, adder: str, handler: Callable) -> None:
    import importlib

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), adder)(parser)

    sub = subparsers.add_parser(name, help=text, add_arguments=add_arguments)
    sub.set_defaults(handler=handler, takes_overrides=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere, also after a subcommand's flags and overrides
    argv = [arg for arg in argv if arg != "--debug"]
    args, rest = parser.parse_known_args(argv)
    args.verbose = args.verbose or debug
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if rest and not args.takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args, rest)
    except (ConfigError, ModelNotFoundError, PromptError, FileExistsError, FileNotFoundError, ValueError,
            RunInUseError, OSError) as exc:
        # TrainingSetupError, ArtifactError and the data errors are ValueErrors: user mistakes, not bugs.
        # OSErrors (a full disk, a name too long, no permission) are the system's answer: one line with
        # the path. Bugs keep their traceback.
        if args.verbose:
            raise
        text = describe_os_error(exc) if isinstance(exc, OSError) and exc.filename is not None else str(exc)
        print(f"viewneti: error: {text}\n(run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
