"""`serq broker definitions`: RabbitMQ users, vhost, permissions and exchanges of a least-privilege deployment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("broker", help="RabbitMQ definitions for least-privilege accounts")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    d = bsub.add_parser("definitions", help="print (or write) the definitions file the broker imports",
                        description="Users serq-operator, serq-trainer, serq-worker and serq-client with the "
                                    "permissions of docs/deploy.md, and the exchanges (<p>.dead, .results, .events, "
                                    ".models) the broker creates at boot, for SERQ_PREFIX. Passwords come from "
                                    "BROKER_OPERATOR_PASSWORD, BROKER_TRAINER_PASSWORD, BROKER_WORKER_PASSWORD and "
                                    "BROKER_CLIENT_PASSWORD (and, for an autoscaler's monitoring account "
                                    "serq-keda, BROKER_KEDA_PASSWORD) and are written only as salted hashes.")
    d.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    d.add_argument("--vhost", default="/", help="virtual host (default /)")
    d.set_defaults(func=run_definitions)


def run_definitions(args: argparse.Namespace) -> int:
    import json

    from serq.settings import get_settings
    from serq.transport.accounts import definitions, passwords_from_env

    try:
        doc = definitions(get_settings().prefix, passwords_from_env(), args.vhost)
    except ValueError as exc:
        print(f"serq broker definitions: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
        except OSError as exc:
            print(f"serq broker definitions: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
