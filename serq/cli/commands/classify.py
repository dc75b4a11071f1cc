"""`serq classify FILE|DIR... [--json] [--timeout S]`: classify through the broker (a running `serq worker`).

Prints exactly what `serq predict` prints (the same JSON per line with ``--json``);
only the path differs: the clip travels to a worker and back.
"""

from __future__ import annotations

import argparse
import sys

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("classify", help="classify audio files through RabbitMQ (needs a running `serq worker`)",
                       description="Send clips to <prefix>.classify and print the replies in `serq predict`'s "
                                   "format. Exit code 1 if any file failed, 2 if no broker or no worker answered.")
    p.add_argument("paths", nargs="+", metavar="FILE|DIR")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for each reply (default SERQ_REQUEST_TIMEOUT)")
    p.add_argument("--in-flight", type=int, default=16, metavar="N", help="requests awaiting replies at once (default 16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.cli.output import expand_paths, format_result, print_json
    from serq.client import Client, ClientError, ServiceError, Timeout
    from serq.progress import progress_printer
    from serq.schemas import ErrorInfo, ErrorReply

    paths = list(expand_paths(args.paths))
    bar = progress_printer("classifying") if not args.json and len(paths) > 1 else None
    tty = sys.stderr.isatty()
    failed = answered = 0
    with Client(timeout=args.timeout) as client:
        for done, (path, outcome) in enumerate(client.classify_many(paths, max_in_flight=args.in_flight), 1):
            if isinstance(outcome, Timeout) and not answered:
                raise outcome  # nothing has answered at all: no worker, say so once
            if isinstance(outcome, ClientError):
                reply = outcome.reply if isinstance(outcome, ServiceError) and outcome.reply else None
                # The same fields `serq predict` prints for a failed file: the error and the file.
                result = ErrorReply(file=str(path), error=reply.error if reply else
                                    ErrorInfo(code=outcome.code, message=outcome.message))
                failed += 1
            else:
                result = outcome.model_copy(update={"file": str(path)})
            answered += isinstance(outcome, ServiceError) or not isinstance(outcome, ClientError)
            is_error = isinstance(result, ErrorReply)
            if args.json:
                print_json(result.model_dump(exclude_none=is_error))
                continue
            if bar and tty:
                sys.stderr.write("\r\x1b[K")  # clear the bar before the result's lines
            print(format_result(result.model_dump()), file=sys.stderr if is_error else sys.stdout, flush=True)
            if bar:
                bar(done, len(paths))
    return 1 if failed else 0
