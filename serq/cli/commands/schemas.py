"""`serq schemas generate|check`: the contract's JSON Schema files and AsyncAPI document."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("schemas", help="generate or check the message contract's JSON Schema and AsyncAPI files")
    ssub = p.add_subparsers(dest="schemas_command", metavar="ACTION", required=True)
    gen = ssub.add_parser("generate", help="write schemas/json/*.json and schemas/asyncapi.yaml from the models")
    gen.add_argument("--out", metavar="DIR", help="where to write (default: the package's schemas folder)")
    gen.set_defaults(func=run_generate)
    chk = ssub.add_parser("check", help="exit 1 if the checked-in documents differ from the models")
    chk.add_argument("--dir", metavar="DIR", help="folder to check (default: the package's schemas folder)")
    chk.set_defaults(func=run_check)


def run_generate(args: argparse.Namespace) -> int:
    from serq.schemas.generate import HERE, write

    root = Path(args.out) if args.out else HERE
    changed = write(root)
    print(f"{len(changed)} file(s) updated in {root}" + "".join(f"\n  {rel}" for rel in changed))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from serq.schemas.generate import HERE, check

    root = Path(args.dir) if args.dir else HERE
    drift = check(root)
    if drift:
        print("out of date (run `serq schemas generate`): " + ", ".join(drift), file=sys.stderr)
        return 1
    print(f"contract documents in {root} match the models")
    return 0
