"""The `vatt` command. Each subcommand parses its arguments here and calls into the library;
heavy imports (torch, ray) happen inside the handlers so `vatt --help` stays fast."""

from __future__ import annotations

import argparse
import sys


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny",
                        help="config preset under configs/ (tiny, bbs, mbs, lbs, ma-medium) or a YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotlist overrides, e.g. model.video.drop_rate=0.25")


def _cmd_info(args: argparse.Namespace) -> int:
    from vatt.model.summary import print_summary

    from vatt.config import load_config

    print_summary(load_config(args.preset, args.overrides), forward=not args.no_forward)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from vatt.train.pretrain import run_cli

    return run_cli(args.preset, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vatt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="build a model from a preset, print parameter counts, "
                                       "FLOPs and run one forward pass")
    _add_config_args(info)
    info.add_argument("--no-forward", action="store_true", help="count only, skip the forward pass")
    info.set_defaults(handler=_cmd_info)

    pretrain = sub.add_parser("pretrain", help="pretrain VATT with Ray Train (local Ray, or the "
                                               "cluster at RAY_ADDRESS); same run name resumes")
    _add_config_args(pretrain)
    pretrain.set_defaults(handler=_cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vatt.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"vatt {args.command}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
