"""`serq predict FILE|DIR... [--json]`: classify in-process with the active (else default) model."""

from __future__ import annotations

import argparse
import sys

from serq.errors import SerqError

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify audio files in-process (no broker)",
                       description="Classify clips with the active model (else the shipped default). "
                                   "Exit code 1 if any file failed.")
    p.add_argument("paths", nargs="+", metavar="FILE|DIR")
    p.add_argument("--model", metavar="VERSION", help="a registry version instead of the active model")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.output import expand_paths, format_result, print_json
    from serq.models.registry import Registry
    from serq.schemas import ErrorInfo, ErrorReply
    from serq.settings import get_settings
    from serq.worker.engine.inference import classify

    settings = get_settings()
    registry = Registry(settings.model_dir)
    model = registry.load(args.model) if args.model else registry.load_active()
    failed = 0
    for path in expand_paths(args.paths):
        try:
            result = classify(path, model, settings, file=str(path))
        except SerqError as exc:
            result = ErrorReply(file=str(path), error=ErrorInfo(**exc.to_dict()))
        except OSError as exc:
            result = ErrorReply(file=str(path), error=ErrorInfo(code="not_found", message=f"cannot read {path}: {exc.strerror}"))
        if isinstance(result, ErrorReply):
            failed += 1
        if args.json:
            print_json(result.model_dump(exclude_none=isinstance(result, ErrorReply)))
        else:
            print(format_result(result.model_dump()), file=sys.stdout if not isinstance(result, ErrorReply) else sys.stderr)
    return 1 if failed else 0
