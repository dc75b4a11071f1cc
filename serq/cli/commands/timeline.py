"""`serq timeline FILE [--json] [--png OUT] [--broker] [--speaker KEY]`: the emotional course of a long recording."""

from __future__ import annotations

import argparse
import os
import sys

from serq.errors import SerqError

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser(
        "timeline", help="emotion over time in a long recording (speech segments, smoothed labels)",
        description="Split a recording into speech segments, classify windows of each with the active model, "
                    "smooth them and print the segments with a strip chart. Reads the file block by block "
                    "(memory bounded by the window, not the recording). Window, hop and pause come from "
                    "SERQ_TIMELINE_WINDOW_S, SERQ_TIMELINE_HOP_S, SERQ_TIMELINE_MAX_PAUSE_S.")
    p.add_argument("path", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the timeline as one JSON object")
    p.add_argument("--png", metavar="OUT", help="also draw the timeline into this PNG (needs matplotlib)")
    p.add_argument("--model", metavar="VERSION", help="a registry version instead of the active model (local only)")
    p.add_argument("--broker", action="store_true",
                   help="compute it on the workers, streaming the file in chunks through RabbitMQ")
    p.add_argument("--speaker", metavar="KEY",
                   help="apply this speaker's profile (from `serq profiles enroll`) to every window")
    p.add_argument("--dir", metavar="DIR", help="where profiles are kept (default: $XDG_DATA_HOME/serq/profiles)")
    p.add_argument("--chunk", type=float, default=5.0, metavar="S", help="seconds per streamed chunk (--broker)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for each chunk's reply (--broker)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json
    from serq.cli.timeline_view import render_timeline, save_png
    from serq.settings import get_settings

    settings = get_settings()
    live = not args.json and sys.stdout.isatty()

    def show(seg) -> None:  # segments as they are decided, on a terminal
        if live:
            print(f"  {seg.start:8.1f}–{seg.end:8.1f} s  {seg.label} ({seg.confidence:.0%})", file=sys.stderr, flush=True)

    if os.path.isdir(args.path):
        raise SerqError(f"timeline takes one recording, and {args.path} is a directory: name a file in it",
                        code="invalid_request")
    profile = None
    if args.speaker:
        from serq.client.profiles import ProfileStore, default_directory

        profile = ProfileStore(args.dir or default_directory()).get(args.speaker)
        if profile is None:
            raise SerqError(f"no profile for speaker {args.speaker!r}: enrol them first "
                            "(`serq profiles enroll KEY FILES`)", code="not_found")
    try:
        if args.broker:
            if args.model:
                raise SerqError("--model applies to local runs; workers use their active model", code="invalid_request")
            from serq.client.timeline import stream_timeline

            timeline = stream_timeline(None, args.path, on_segment=show, chunk_s=args.chunk, timeout=args.timeout,
                                       profile=profile)
        else:
            from serq.cli.timeline_view import local_timeline

            timeline = local_timeline(args.path, settings, version=args.model, on_segment=show, profile=profile)
    except OSError as exc:
        raise SerqError(f"cannot read {args.path}: {exc.strerror or exc}", code="not_found") from None
    if args.json:
        print_json(timeline)
    else:
        print(render_timeline(timeline))
    if args.png:
        print(f"wrote {save_png(timeline, args.png)}", file=sys.stderr)
    return 0
