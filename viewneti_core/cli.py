"""The `viewneti` command. Subcommands that take a config accept dotted overrides after their flags,
e.g. `viewneti demo --config configs/demo.yaml --eval.seeds [0,1] --run.device cpu`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from viewneti_core.config import ConfigError, dump_config, load_config
from viewneti_core.errors import ModelNotFoundError, PromptError


def _config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", type=Path, default=default, help="YAML config file")
    parser.epilog = "Any further --section.key VALUE pairs override the config (e.g. --optim.max_train_steps 3000)."


def _cmd_config_show(args: argparse.Namespace, overrides: list[str]) -> int:
    print(dump_config(load_config(args.config, overrides)), end="")
    return 0


def _cmd_make_model(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.sd_models import build_components, save_components

    builder = "tiny" if args.command == "make-tiny" else "sd21-random"
    out = save_components(build_components(builder, seed=args.seed), args.out, builder=builder)
    print(f"wrote the {builder} model (RANDOM WEIGHTS) in diffusers format to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.demo import run_demo

    config = load_config(args.config, overrides)
    result = run_demo(config, args.out)
    print(f"\nViewNeTI demo finished in {result.seconds:.1f} s (RANDOM WEIGHTS: images are not benchmark quality)")
    print(f"  images:  {result.out_dir / 'samples'} ({len(result.images)} files)")
    for grid in result.grids:
        print(f"  grid:    {grid}")
    print(f"  summary: {result.summary}")
    return 0


def _cmd_make_synthetic(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.synthetic import run_make_synthetic

    return run_make_synthetic(args)


def _cmd_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from viewneti_core.prepare import run_prepare

    return run_prepare(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewneti", description="Viewpoint Neural Textual Inversion (ViewNeTI)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    demo = groups.add_parser("demo", help="sample view-conditioned images on the embedded default (tiny model)")
    _config_args(demo, default="configs/demo.yaml")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output directory")
    demo.set_defaults(handler=_cmd_demo, takes_overrides=True)

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

    data = groups.add_parser("data", help="DTU data: synthetic scenes and preparation").add_subparsers(
        dest="command", required=True
    )
    _add_data_command(data, "make-synthetic", "write synthetic DTU-format scenes", "synthetic",
                      "add_make_synthetic_arguments", _cmd_make_synthetic)
    _add_data_command(data, "prepare", "download/extract/validate DTU scans into a normalised tree", "prepare",
                      "add_prepare_arguments", _cmd_prepare)
    return parser


def _add_data_command(subparsers, name: str, text: str, module: str, adder: str, handler: Callable) -> None:
    import importlib

    sub = subparsers.add_parser(name, help=text)
    getattr(importlib.import_module(f"viewneti_core.{module}"), adder)(sub)
    sub.set_defaults(handler=handler, takes_overrides=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if rest and not args.takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args, rest)
    except (ConfigError, ModelNotFoundError, PromptError, FileExistsError, FileNotFoundError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"viewneti: error: {exc}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
