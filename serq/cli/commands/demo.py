"""`serq demo`: broker (found or started), worker, trainer, the bot's script over samples/, then clean up."""

from __future__ import annotations

import argparse
from pathlib import Path

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole service on this machine and show it with the bot",
                       description="Uses the broker at SERQ_AMQP_URL, or starts a private one (rabbitmq-server, "
                                   "else docker compose); starts a worker and a trainer on a private prefix and "
                                   "model directory; the bot plays, analyses and classifies every sample clip "
                                   "and shows the model's speaker-independent accuracy; then stops everything "
                                   "it started. Exit status 0 when every bot command worked.")
    p.add_argument("--samples", type=Path, metavar="DIR", help="clips to show (default: the repository's samples/)")
    p.add_argument("--train", action="store_true",
                   help="also train a small model on 6 RAVDESS actors (SERQ_RAVDESS_DIR), activate it, classify again")
    p.add_argument("--no-play", dest="play", action="store_false", help="do not play the clips")
    p.add_argument("--png", type=Path, metavar="DIR", help="write each clip's spectrum figure into DIR")
    p.add_argument("--keep", action="store_true", help="keep the demo's temp dir (service logs, models)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.demo import run as demo

    return demo(samples_dir=args.samples, train=args.train, play=args.play, png_dir=args.png, keep=args.keep)
