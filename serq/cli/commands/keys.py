"""`serq keys generate DIR`: an Ed25519 key pair to sign models with (SERQ_SIGNING_KEY / SERQ_TRUSTED_KEYS)."""

from __future__ import annotations

import argparse

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("keys", help="create the key pair that signs models")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="write DIR/signing.key (mode 0600) and DIR/signing.pub",
                          description="Write a new Ed25519 key pair. The trainer and operators sign with "
                                      "SERQ_SIGNING_KEY=DIR/signing.key; workers trust "
                                      "SERQ_TRUSTED_KEYS=DIR/signing.pub "
                                      "(colon-separated for several). Never overwrites an existing key.")
    gen.add_argument("dir", metavar="DIR")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json
    from serq.models.signing import Signer, generate_keys

    key, pub = generate_keys(args.dir)
    key_id = Signer.load(key).key_id
    if args.json:
        print_json({"signing_key": str(key), "public_key": str(pub), "key_id": key_id})
    else:
        print(f"wrote {key} (private, mode 0600) and {pub} (key id {key_id})")
        print(f"sign with SERQ_SIGNING_KEY={key}; workers trust SERQ_TRUSTED_KEYS={pub}")
    return 0
