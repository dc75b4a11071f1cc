"""`serq profiles enroll|classify|list|show|delete|activate|build-model`: speaker profiles (docs/profiles.md).

``enroll`` and ``classify`` go through the broker (workers keep nothing; the
profiles live in ``--dir``); ``list``/``show``/``delete`` only touch that directory;
``activate`` and ``build-model`` manage the speaker-normalised model workers serve.
"""

from __future__ import annotations

import argparse
import sys

from serq.cli.commands.models import announce, announce_options, rebuild_options

# Only the standard library (and the models command's helpers) at the top: `serq --help` imports every command
# module, so each command imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("profiles", help="enrol speakers and classify their clips with their profiles",
                       description="Speaker profiles: per-speaker feature statistics (no audio) that let the "
                                   "speaker-normalised model answer. See docs/profiles.md.")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)

    def with_dir(q):
        q.add_argument("--dir", metavar="DIR", help="where profiles are kept (default: $XDG_DATA_HOME/serq/profiles)")
        return q

    en = with_dir(psub.add_parser("enroll", help="build or extend SPEAKER's profile from clips (via the broker)"))
    en.add_argument("speaker", help="an opaque key (an id, not a name)")
    en.add_argument("paths", nargs="+", metavar="FILE|DIR", help="5-12 clips of the speaker talking normally")
    en.add_argument("--updates", action="store_true", help="let later classified clips update the profile")
    en.add_argument("--timeout", type=float)
    en.add_argument("--json", action="store_true")
    en.set_defaults(func=run_enroll)
    cl = with_dir(psub.add_parser("classify", help="classify clips with SPEAKER's profile (via the broker)"))
    cl.add_argument("speaker")
    cl.add_argument("paths", nargs="+", metavar="FILE|DIR")
    cl.add_argument("--timeout", type=float)
    cl.add_argument("--json", action="store_true", help="one JSON object per line per file")
    cl.set_defaults(func=run_classify)
    ls = with_dir(psub.add_parser("list", help="speakers with a profile"))
    ls.set_defaults(func=run_list)
    sh = with_dir(psub.add_parser("show", help="a speaker's profile as JSON"))
    sh.add_argument("speaker")
    sh.set_defaults(func=run_show)
    rm = with_dir(psub.add_parser("delete", help="forget a speaker's profile"))
    rm.add_argument("speaker")
    rm.set_defaults(func=run_delete)
    act = psub.add_parser("activate", help="serve VERSION (a speaker-normalised model) on the profile path, "
                                           "or 'default' for the shipped one")
    act.add_argument("version")
    announce_options(act)
    act.set_defaults(func=run_activate)
    bm = psub.add_parser("build-model", help="rebuild the shipped speaker-normalised model from RAVDESS")
    rebuild_options(bm, "models/default_speaker")
    bm.set_defaults(func=run_build_model)


def _store(args):
    from serq.client.profiles import ProfileStore, default_directory

    return ProfileStore(args.dir or default_directory())


def run_enroll(args: argparse.Namespace) -> int:
    from serq.cli.output import expand_paths, print_json, too_few_clips
    from serq.client import Client
    from serq.client.profiles import SpeakerProfiles

    paths = list(expand_paths(args.paths))
    with Client(timeout=args.timeout) as client:
        speakers = SpeakerProfiles(client, store=_store(args))
        profile = speakers.enroll(args.speaker, paths, updates=args.updates)
    if speakers.clips_short(profile):
        print(too_few_clips(args.speaker, profile.count, speakers.min_clips), file=sys.stderr)
    if args.json:
        print_json(profile)
    else:
        print(f"{args.speaker}: profile of {profile.count} clips (features {profile.feature_version}, "
              f"updates {'allowed' if profile.updates else 'off'})")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from serq.cli.output import answered_by, expand_paths, format_result, print_json
    from serq.client import Client, ClientError
    from serq.client.profiles import SpeakerProfiles
    from serq.schemas import ErrorInfo, ErrorReply

    failed = 0
    with Client(timeout=args.timeout) as client:
        speakers = SpeakerProfiles(client, store=_store(args))
        for path in expand_paths(args.paths):
            try:
                result = speakers.classify(args.speaker, path).model_copy(update={"file": str(path)})
            except ClientError as exc:
                failed += 1
                result = ErrorReply(file=str(path), error=ErrorInfo(code=exc.code, message=str(exc)))
            if args.json:
                print_json(result.model_dump(exclude_none=isinstance(result, ErrorReply)))
            elif isinstance(result, ErrorReply):
                print(format_result(result.model_dump()), file=sys.stderr)
            else:
                print(format_result(result.model_dump()))
                print(f"  {answered_by(result)}")
    return 1 if failed else 0


def run_list(args: argparse.Namespace) -> int:
    for key in _store(args).keys():
        print(key)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json

    profile = _store(args).get(args.speaker)
    if profile is None:
        print(f"serq profiles: no profile for {args.speaker!r}", file=sys.stderr)
        return 1
    print_json(profile)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if _store(args).delete(args.speaker):
        print(f"deleted the profile of {args.speaker!r}")
        return 0
    print(f"serq profiles: no profile for {args.speaker!r}", file=sys.stderr)
    return 1


def run_activate(args: argparse.Namespace) -> int:
    """Point the profile path at VERSION (or the shipped model) and announce it, like `serq models activate`."""
    from serq.models.registry import Registry, activate_speaker, shipped_speaker_metadata
    from serq.settings import get_settings

    registry = Registry(get_settings().model_dir)
    if args.version == "default":
        shipped = shipped_speaker_metadata()
        if shipped is None:
            print("serq profiles: this installation ships no speaker model", file=sys.stderr)
            return 1
        return announce(activate_speaker(registry, shipped.version), args, "the profile path serves the shipped",
                        "activate")
    return announce(activate_speaker(registry, args.version), args, "the profile path serves", "activate")


def run_build_model(args: argparse.Namespace) -> int:
    from serq.cli.output import format_profile_reports, print_json
    from serq.progress import progress_printer
    from serq.settings import get_settings
    from serq.worker.training.shipped import build_default_speaker

    meta, evaluations = build_default_speaker(args.data or str(get_settings().ravdess_dir), args.out,
                                              progress=None if args.json else progress_printer)
    if args.json:
        print_json({"version": meta.version,
                    "evaluations": {m: {k: v.model_dump(mode="json") for k, v in r.items()}
                                    for m, r in evaluations.items()}})
    else:
        print(f"speaker model {meta.version} written")
        for reports in evaluations.values():
            print(format_profile_reports(reports))
    return 0
