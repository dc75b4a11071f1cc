"""The `serq` command: one console script, one subcommand per job.

Each subcommand lives in :mod:`serq.cli.commands` and registers itself with
``register(subparsers)``; heavy imports (librosa, scikit-learn) happen inside the
handlers, so `serq --help` and the broker-only commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from serq import __version__
from serq.errors import SerqError
from serq.extras import missing_extra

#: Subcommand modules, in the order `serq --help` lists them.
COMMAND_MODULES = (
    "serq.cli.commands.predict",
    "serq.cli.commands.classify",
    "serq.cli.commands.timeline",
    "serq.cli.commands.worker",
    "serq.cli.commands.evaluate",
    "serq.cli.commands.train",
    "serq.cli.commands.adapt",
    "serq.cli.commands.models",
    "serq.cli.commands.profiles",
    "serq.cli.commands.trainer",
    "serq.cli.commands.keys",
    "serq.cli.commands.broker",
    "serq.cli.commands.data",
    "serq.cli.commands.schemas",
    "serq.cli.commands.bot",
    "serq.cli.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serq", description="Speech emotion recognition served over RabbitMQ. Settings come from SERQ_* variables."
    )
    parser.add_argument("--version", action="version", version=f"serq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SerqError as exc:
        return _fail(args.command, exc)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc, f"serq {args.command}")
        if hint is None:
            raise
        return _fail(args.command, hint)
    except BrokenPipeError:
        # The reader went away (`serq predict --json ... | head -1`): stop quietly, as `git log | head` does.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"serq {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, exc: SerqError) -> int:
    print(f"serq {command}: error [{exc.code}]: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
