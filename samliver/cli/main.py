"""``samliver`` entry point: sub-commands, and one-line errors (exit 2) for user mistakes."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from samliver import __version__
from samliver.errors import SamliverError

from . import data_cmd, doctor_cmd, evaluate_cmd, segment_cmd, synth_cmd, weights_cmd

# Each sub-command module has add_parser(subparsers) and sets `func` on its parser.
COMMANDS = (segment_cmd, evaluate_cmd, data_cmd, synth_cmd, weights_cmd, doctor_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samliver", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"samliver {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def report_errors(prog: str, call: Callable[[], int | None], debug: bool = False,
                  interrupted: str = "interrupted") -> int:
    """Run ``call``; a user mistake (`SamliverError`) prints one line and returns 2 (with
    ``debug`` it is raised, traceback and all); Ctrl-C returns 130."""
    try:
        return int(call() or 0)
    except SamliverError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors("samliver", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
