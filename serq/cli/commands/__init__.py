"""Subcommands of `serq`; each module has ``register(subparsers)``."""
