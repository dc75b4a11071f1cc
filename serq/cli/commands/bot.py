"""`serq bot [FILES|DIRS] [--script FILE]`: the demo console bot (see :mod:`serq.cli.bot`)."""

from __future__ import annotations

import argparse

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("bot", help="interactive console: play, spectrum, classify, train, accuracy",
                       description="A console over the running service: `list`, `play FILE`, `spectrum FILE "
                                   "[--png OUT]`, `classify FILE|DIR [--speaker S]`, `timeline FILE [--png OUT] [--speaker S]`, "
                                   "`enroll SPEAKER FILE...`, `profiles`, `forget SPEAKER`, `train`, `models`, "
                                   "`accuracy`, `help`, "
                                   "`quit`. Commands come from the terminal (history, tab completion), or one per "
                                   "line from stdin or --script; then the exit status is 1 if any command failed.")
    p.add_argument("paths", nargs="*", metavar="FILE|DIR", help="clips the bot knows (default: the sample clips)")
    p.add_argument("--script", metavar="FILE", help="read commands from FILE instead of the terminal")
    p.add_argument("--profiles", metavar="DIR", help="keep speaker profiles in DIR (default: in memory, gone when "
                                                     "the bot quits; `serq profiles` uses ~/.local/share/serq/profiles)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.bot import main

    return main(args.paths, args.script, args.profiles)
