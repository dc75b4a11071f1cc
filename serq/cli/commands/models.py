"""`serq models list|show|activate|rollback|build-default`: the model registry."""

from __future__ import annotations

import argparse
import sys

from serq.errors import BrokerUnavailable

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser("models", help="list, inspect, activate or roll back model versions")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="every version; * marks the active one")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    show = msub.add_parser("show", help="metadata and model card of a version (default: active)")
    show.add_argument("version", nargs="?")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)
    act = msub.add_parser("activate", help="make VERSION the active model")
    act.add_argument("version")
    announce_options(act)
    act.set_defaults(func=run_activate)
    rb = msub.add_parser("rollback", help="re-activate the version active before the current one")
    announce_options(rb)
    rb.set_defaults(func=run_rollback)
    bd = msub.add_parser("build-default", help="rebuild the shipped default model from RAVDESS, reproducibly")
    rebuild_options(bd, "models/default")
    bd.set_defaults(func=run_build_default)


def _registry():
    from serq.models.registry import Registry
    from serq.settings import get_settings

    return Registry(get_settings().model_dir)


def _line(meta, active: bool) -> str:
    m = meta.metrics
    figure = f"bal.acc {m.balanced_accuracy:.3f} ({m.protocol})" if m else "not evaluated"
    return f"{'*' if active else ' '} {meta.version:<28} {len(meta.labels)} classes  {figure}"


def run_list(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json
    from serq.models.registry import default_metadata

    registry = _registry()
    active = registry.active_metadata().version
    metas = [default_metadata()] + registry.list()
    if args.json:
        print_json([{"version": m.version, "active": m.version == active, "labels": m.labels,
                     "created": m.created.isoformat(),
                     "balanced_accuracy": m.metrics.balanced_accuracy if m.metrics else None} for m in metas])
    else:
        for meta in metas:
            print(_line(meta, meta.version == active))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json
    from serq.models.registry import CARD, DEFAULT_DIR, default_metadata

    registry = _registry()
    meta = registry.metadata(args.version) if args.version else registry.active_metadata()
    if args.json:
        print_json(meta)
    else:
        folder = DEFAULT_DIR if meta.version == default_metadata().version else registry.folder(meta.version)
        card = folder / CARD
        print(card.read_text() if card.exists() else meta.model_dump_json(indent=2))
    return 0


def rebuild_options(parser, folder: str) -> None:
    """The options of every command that rebuilds a shipped model (into ``folder`` by default)."""
    parser.add_argument("--data", metavar="DIR", help="RAVDESS directory (default: SERQ_RAVDESS_DIR)")
    parser.add_argument("--out", metavar="DIR", help=f"where to write it (default: the package's {folder})")
    parser.add_argument("--json", action="store_true")


def announce_options(parser) -> None:
    """The options of every command that ends in :func:`announce`."""
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-publish", action="store_true", help="only change the registry; do not tell running workers")


def announce(meta, args, verb: str, reason: str) -> int:
    """Report a registry change, and publish it, signed, on <prefix>.models (hot-swap) unless --no-publish."""
    from serq.cli.output import print_json

    published, note = False, "not published (--no-publish)"
    if not args.no_publish:
        from serq.settings import get_settings

        settings = get_settings()
        try:
            event = announce_version(meta.version, reason=reason, settings=settings)
            published, note = True, f"published on {settings.name('models')}"
            if event.signature is None:
                note += " UNSIGNED (no SERQ_SIGNING_KEY): workers refuse it unless SERQ_ALLOW_UNSIGNED_MODELS=true"
        except BrokerUnavailable as exc:
            # The registry change stands: workers sharing SERQ_MODEL_DIR load it when they (re)start.
            note = f"not published: {exc}; running workers keep their model until they restart"
    if getattr(args, "json", False):
        print_json({"version": meta.version, "active": True, "published": published})
    else:
        print(f"{verb} {meta.version}")
        print(note, file=sys.stdout if published and "UNSIGNED" not in note else sys.stderr)
    return 0


def run_activate(args: argparse.Namespace) -> int:
    return announce(_registry().activate(args.version), args, "activated", "activate")


def run_rollback(args: argparse.Namespace) -> int:
    return announce(_registry().rollback(), args, "rolled back to", "rollback")


def run_build_default(args: argparse.Namespace) -> int:
    from serq.cli.output import format_report, print_json
    from serq.settings import get_settings
    from serq.worker.training.shipped import build_default

    meta = build_default(args.data or get_settings().ravdess_dir, args.out)
    if args.json:
        print_json(meta)
    else:
        print(f"default model {meta.version} written")
        print(format_report(meta.metrics.model_dump()))
    return 0


def announce_version(version: str, *, reason: str = "activate", settings=None):
    """Announce a registry version (``SERQ_MODEL_DIR``, or a shipped one) to every running worker,
    signed with SERQ_SIGNING_KEY (unsigned without one: workers then refuse it). Returns the event."""
    from serq.models.registry import Registry
    from serq.models.signing import Signer
    from serq.settings import get_settings
    from serq.transport.announce import publish_event

    settings = settings or get_settings()
    event = Registry(settings.model_dir).announcement(version, reason, Signer.from_settings(settings))
    publish_event(event, settings=settings)
    return event
