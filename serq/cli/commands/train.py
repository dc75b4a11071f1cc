"""`serq train`: fit, cross-validate by speaker, register (and maybe activate) a model.

``--local`` runs the job in this process; without it the job goes to a trainer
over the broker (see :mod:`serq.client`).
"""

from __future__ import annotations

import argparse

from serq.errors import InvalidRequest, SerqError

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (locally with --local, else via the trainer service)",
                       description="Extract features (cached), cross-validate by speaker, fit on all data, register "
                                   "a new version. --activate alone means 'always'.")
    p.add_argument("--local", action="store_true", help="train in this process instead of sending a job")
    p.add_argument("--data", metavar="DIR|CSV[:W]", action="append",
                   help="dataset (default: SERQ_RAVDESS_DIR); repeat for several sources, each with an optional "
                        "weight after a colon (every clip of it counts W times), e.g. --data ravdess --data mine.csv:10")
    p.add_argument("--emotions", metavar="a,b,...", help="subset of emotions (default: all 8)")
    p.add_argument("--speakers", metavar="ID,...", help="only these speakers, e.g. 01,02,03")
    p.add_argument("--activate", nargs="?", const="always", default="never",
                   choices=["always", "if_better", "never"], help="activation policy (default: never)")
    p.add_argument("--protocol", choices=["speaker", "random"], default="speaker",
                   help="cross-validation: speaker-grouped (default, honest) or random over clips")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--hidden", metavar="N,N", help="hidden layer sizes (default 256)")
    p.add_argument("--alpha", type=float, help="L2 penalty")
    p.add_argument("--max-iter", type=int)
    p.add_argument("--seed", type=int, help="random_state")
    p.add_argument("--augment", metavar="S,S|none",
                   help="speed-perturbed copies of each training clip, e.g. 0.9,1.1 (the default); none = no copies")
    p.add_argument("--channel-copies", type=int, metavar="N",
                   help="channel-augmented copies of each training clip: noise, phone line, codec, room, gain, "
                        "pitch (default 3; 0 = none; docs/training.md)")
    p.add_argument("--speaker-normalisation", action="store_true",
                   help="train a model that expects speaker profiles (served on the profile path; docs/profiles.md)")
    p.add_argument("--wait", action="store_true", help="(broker) wait for the result, showing progress")
    p.add_argument("--timeout", type=float, default=3600.0, help="(broker) seconds to wait for the result")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def build_request(args: argparse.Namespace, default_data: str):
    from pydantic import ValidationError

    from serq.schemas import DataSource, TrainRequest
    from serq.schemas.training import request_error

    hp: dict = {}
    if args.hidden:
        try:
            hp["hidden_layers"] = [int(x) for x in args.hidden.split(",")]
        except ValueError:
            raise SerqError(f"--hidden wants layer sizes like 256 or 128,64, not {args.hidden!r}",
                            code="bad_hyperparameter") from None
    if args.augment is not None:
        try:
            none = args.augment.strip().lower() == "none"
            hp["augment_speeds"] = [] if none else [float(x) for x in args.augment.split(",")]
        except ValueError:
            raise SerqError(f"--augment wants speeds like 0.9,1.1 or none, not {args.augment!r}",
                            code="bad_hyperparameter") from None
    for key, value in (("alpha", args.alpha), ("max_iter", args.max_iter), ("random_state", args.seed),
                       ("channel_copies", args.channel_copies)):
        if value is not None:
            hp[key] = value
    try:
        sources = [DataSource.parse(d) for d in args.data or [default_data]]
        one = len(sources) == 1 and sources[0].weight == 1
        return TrainRequest(
            dataset=sources[0].dataset if one else None,
            sources=None if one else sources,
            emotions=args.emotions.split(",") if args.emotions else None,
            speakers=args.speakers.split(",") if args.speakers else None,
            hyperparameters=hp,  # validated inside, so errors name hyperparameters.<field>
            protocol=args.protocol,
            folds=args.folds,
            activate=args.activate,
            speaker_normalisation=args.speaker_normalisation,
        )
    except ValidationError as exc:
        raise request_error(exc) from None
    except ValueError as exc:
        raise InvalidRequest(f"bad training request: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from serq.settings import get_settings

    settings = get_settings()
    return run_job(build_request(args, str(settings.ravdess_dir)), args, settings)


def run_job(request, args: argparse.Namespace, settings, what: str = "train") -> int:
    """A training or adaptation request: to the trainer over the queue, or here with ``--local``."""
    if not args.local:
        from serq.cli.commands.train_remote import run_remote  # lazy: not needed by `serq --help`

        return run_remote(request, args, settings)
    from serq.cli.output import show_train_result
    from serq.progress import progress_printer
    from serq.worker.training.job import run_training

    printers: dict = {}

    def report(stage: str, done: int, total: int) -> None:
        if not args.json:
            printers.setdefault(stage, progress_printer(stage))(done, total)

    return show_train_result(run_training(request, settings, report=report), args.json, what)

