"""`serq evaluate --data DIR [--model VERSION] [--conditions C,C] [--json]`: score a model on labelled data.

Honest by default: clips of speakers the model was trained on are left out (and
counted), so the figure is speaker-independent unless asked otherwise.
"""

from __future__ import annotations

import argparse

from serq.errors import InvalidRequest

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on a labelled dataset (speakers it never heard)",
                       description="Score the active model (or --model) on a labelled directory or CSV manifest. "
                                   "Clips of speakers in the model's training data are skipped unless "
                                   "--include-seen-speakers is given (then the figure is labelled speaker-dependent).")
    p.add_argument("--data", required=True, metavar="DIR|CSV")
    p.add_argument("--model", metavar="VERSION")
    p.add_argument("--include-seen-speakers", action="store_true",
                   help="also score clips of speakers the model was trained on (speaker-dependent)")
    p.add_argument("--speaker-profiles", metavar="enroll:N|online",
                   help="compare plain vs speaker-profile figures: on speakers the models never heard, the model and "
                        "its speaker-normalised counterpart as they are (1 speaker is enough); else by speaker-grouped "
                        "k-fold on --data (the model's recipe refitted per fold; see docs/profiles.md)")
    p.add_argument("--conditions", metavar="C,C,...",
                   help="score under recording conditions, e.g. clean,gain:-18,peak,phone,noise:20,noise:10,"
                        "reverb:0.5,mp3:32 (see docs/training.md); on speakers the model was trained on, its "
                        "recipe is refitted by speaker-grouped k-fold")
    p.add_argument("--seed", type=int, default=0, help="seed of the conditions' noise and rooms (default 0)")
    p.add_argument("--folds", type=int, default=5, help="folds for --speaker-profiles and --conditions (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.output import format_profile_reports, format_report, print_json
    from serq.models.registry import Registry
    from serq.settings import get_settings
    from serq.worker.training.evaluation import evaluate_model
    from serq.worker.training.new_speakers import evaluate_speaker_profiles

    settings = get_settings()
    registry = Registry(settings.model_dir)
    model = registry.load(args.model) if args.model else registry.load_active()
    if args.conditions and args.speaker_profiles:
        raise InvalidRequest("--conditions and --speaker-profiles are separate evaluations: give one")
    if args.conditions:  # issue 16: logic in serq.worker.training.evaluation
        from serq.models.card import conditions_table
        from serq.worker.training.conditions import parse_conditions
        from serq.worker.training.evaluation import evaluate_conditions

        report = evaluate_conditions(model, args.data, settings, parse_conditions(args.conditions), folds=args.folds,
                                     seed=args.seed, progress=None if args.json else "stderr")
        if args.json:
            print_json(report)
        else:
            print(f"model {model.version}\n" + conditions_table(report))
        return 0
    if args.speaker_profiles:
        reports = evaluate_speaker_profiles(model, args.data, settings, args.speaker_profiles, folds=args.folds,
                                            progress=None if args.json else "stderr")
        if args.json:
            print_json({k: v.model_dump(mode="json") for k, v in reports.items()})
        else:
            refit = reports["speaker_profiles"].protocol.startswith("speaker-grouped")
            print((f"recipe of model {model.version}, refitted by fold" if refit else "the models as they are, no refit")
                  + "\n" + format_profile_reports(reports))
        return 0
    report = evaluate_model(model, args.data, settings, include_seen_speakers=args.include_seen_speakers,
                            progress=None if args.json else "stderr")
    if args.json:
        print_json(report)
    else:
        print(f"model {model.version}")
        print(format_report(report.model_dump()))
    return 0
