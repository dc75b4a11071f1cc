"""`serq adapt --data DIR`: a model adapted to a folder of the user's own unlabelled clips.

Registers a new version that keeps the source model's network and reads features
relative to the folder's statistics (worker/training/adaptation.py). ``--local`` runs it
here; otherwise it is a job for the trainer, like `serq train`, with progress
(``--wait``), an activation policy and the hot-swap an activation brings.
"""

from __future__ import annotations

import argparse

from serq.cli.commands.train import run_job

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a model to a folder of your own unlabelled clips",
                       description="Re-estimate a model's feature standardisation on a folder of unlabelled clips "
                                   "(your calls, device, language) and register it as a new version. The emotion "
                                   "mix of the folder may be skewed (mostly neutral): see docs/training.md.")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of audio clips (no labels needed)")
    p.add_argument("--model", metavar="VERSION", help="the model to adapt (default: the active one)")
    p.add_argument("--method", choices=["auto", "reweighted", "mixture", "robust", "plain"],
                   default="auto", help="how the folder's statistics are estimated (default auto: reweighted, the "
                                        "clips weighted to the model's training mix by its own posteriors)")
    p.add_argument("--activate", nargs="?", const="always", default="never", choices=["always", "if_better", "never"],
                   help="activation policy (default never; if_better cannot compare without labels, so it never "
                        "activates)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="adapt in this process instead of sending a job")
    where.add_argument("--wait", action="store_true", help="(broker) wait for the result, showing progress")
    p.add_argument("--timeout", type=float, default=3600.0, help="(broker) seconds to wait for the result")
    p.add_argument("--json", action="store_true", help="print the result as JSON (an object with `version`)")
    p.set_defaults(func=run)


def build_request(args: argparse.Namespace):
    from pydantic import ValidationError

    from serq.schemas import TrainRequest
    from serq.schemas.training import request_error

    try:
        return TrainRequest(kind="adapt", dataset=args.data, model=args.model, adaptation=args.method,
                            activate=args.activate)
    except ValidationError as exc:
        raise request_error(exc) from None


def run(args: argparse.Namespace) -> int:
    from serq.settings import get_settings

    return run_job(build_request(args), args, get_settings(), "adapt")
