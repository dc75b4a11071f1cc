"""Model signatures: Ed25519 keys, what is signed, and the keys a worker trusts.

Two statements are signed, each a domain tag and a canonical JSON (sorted keys, no
spaces), so a signature of one can never pass for the other:

- a **model**: its metadata whole (version, feature version and layout, labels, the
  artifact's sha256, speaker prior...) and its kind (``plain`` or ``speaker``). Written
  beside the artifact at registration (``versions/<v>/model.sig``);
- an **announcement**: the same, plus the reason (``trained``, ``activate``,
  ``rollback``) and when it was announced, carried by :class:`ModelActivated`. The time
  makes a replayed event recognisable; the reason says whether it may go back to an
  older version.

The artifact itself is covered through its sha256 in the metadata: a verifier checks
the signature first, then the bytes' digest, and only then lets skops read them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from serq.errors import ModelError
from serq.schemas import ModelActivated, ModelMetadata

KEY_FILE = "signing.key"
PUB_FILE = "signing.pub"
#: Beside an artifact in the registry: who signed the model and the signature.
SIGNATURE = "model.sig"
MODEL_DOMAIN = b"serq model v1\n"
ANNOUNCEMENT_DOMAIN = b"serq announcement v1\n"
#: Reasons a signed announcement may carry to move a worker back to an older version.
BACKWARD_REASONS = frozenset({"rollback", "activate"})


class KeyFileError(ModelError):
    """A key file that is missing, unreadable or not an Ed25519 key (or no key where one is needed)."""


def kind(meta: ModelMetadata) -> str:
    """``plain`` or ``speaker``: the slot a model serves in."""
    return "speaker" if meta.normalisation == "speaker" else "plain"


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def model_statement(meta: ModelMetadata) -> bytes:
    """The bytes a model's signature covers."""
    return MODEL_DOMAIN + _canonical({"kind": kind(meta), "metadata": meta.model_dump(mode="json")})


def announcement_statement(meta: ModelMetadata, reason: str, announced_at: datetime) -> bytes:
    """The bytes an announcement's signature covers."""
    return ANNOUNCEMENT_DOMAIN + _canonical({"kind": kind(meta), "metadata": meta.model_dump(mode="json"),
                                             "reason": reason, "announced_at": as_utc(announced_at).isoformat()})


def as_utc(when: datetime) -> datetime:
    """``when`` as an aware UTC time (a naive one is taken as UTC)."""
    return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------- keys on disk


def generate_keys(folder: str | Path) -> tuple[Path, Path]:
    """Write a new pair, ``folder/signing.key`` (mode 0600, PEM PKCS8) and ``folder/signing.pub``.

    Refuses to overwrite an existing key: a lost private key means re-signing every model.
    """
    folder = Path(folder)
    key_path, pub_path = folder / KEY_FILE, folder / PUB_FILE
    if key_path.exists() or pub_path.exists():
        raise KeyFileError(f"{key_path} or {pub_path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    created = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        created = True
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:  # an unwritable or missing parent, a full disk: a typed error, not a traceback
        if created:  # no half pair left behind, which the next attempt would refuse to overwrite
            key_path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write the key pair in {folder}: {exc.strerror or exc}") from None
    return key_path, pub_path


def _read_key(path: Path, private: bool):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror or exc}") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM key ({exc})") from None
    expected = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, expected):
        raise KeyFileError(f"{path} is not an Ed25519 {'private' if private else 'public'} key")
    return key


@dataclass(frozen=True)
class Signer:
    """The private key of SERQ_SIGNING_KEY."""

    key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def load(cls, path: str | Path) -> "Signer":
        key = _read_key(Path(path).expanduser(), private=True)
        return cls(key, key_id(key.public_key()))

    @classmethod
    def from_settings(cls, settings) -> "Signer | None":
        """The settings' signer, or ``None`` when SERQ_SIGNING_KEY is not set."""
        return cls.load(settings.signing_key) if settings.signing_key else None

    def sign(self, statement: bytes) -> str:
        return base64.b64encode(self.key.sign(statement)).decode("ascii")


def require_signer(settings) -> Signer:
    """The settings' signer; :class:`KeyFileError` naming the setting when there is none."""
    signer = Signer.from_settings(settings)
    if signer is None:
        raise KeyFileError("no signing key: set SERQ_SIGNING_KEY to a key from `serq keys generate DIR` "
                        "(workers refuse unsigned models)")
    return signer


@dataclass(frozen=True, eq=False)
class Trust:
    """The public keys of SERQ_TRUSTED_KEYS, and whether unsigned models pass (development only)."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    allow_unsigned: bool = False

    def _identity(self) -> tuple:
        return tuple(sorted(self.keys)), self.allow_unsigned

    def __eq__(self, other) -> bool:
        return isinstance(other, Trust) and self._identity() == other._identity()

    def __hash__(self) -> int:  # a cache key of the registry's speaker models
        return hash(self._identity())

    @classmethod
    def from_settings(cls, settings) -> "Trust":
        keys = {}
        for path in settings.trusted_key_paths:
            public = _read_key(path, private=False)
            keys[key_id(public)] = public
        return cls(keys, settings.allow_unsigned_models)

    @property
    def can_verify(self) -> bool:
        return bool(self.keys)

    def check(self, statement: bytes, signature: str | None, signer: str | None, what: str) -> str:
        """The trusted key id that signed ``statement``; :class:`ModelError` otherwise.

        With ``allow_unsigned`` a missing signature passes (``"unsigned"``); a present
        but wrong one never does.
        """
        if not signature:
            if self.allow_unsigned:
                return "unsigned"
            raise ModelError(f"{what} is not signed (workers accept only models signed by a key in SERQ_TRUSTED_KEYS)")
        if not self.keys:
            if self.allow_unsigned:
                return "unverified"
            raise ModelError(f"{what}: no trusted keys (SERQ_TRUSTED_KEYS) to verify its signature with")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise ModelError(f"{what}: the signature is not base64") from None
        candidates = [self.keys[signer]] if signer in self.keys else list(self.keys.values())
        for public in candidates:
            try:
                public.verify(raw, statement)
                return key_id(public)
            except InvalidSignature:
                continue
        raise ModelError(f"{what}: not signed by a trusted key (signer {str(signer)[:16]!r})")


# ---------------------------------------------------------------- models and announcements


def signature_record(meta: ModelMetadata, signer: Signer) -> bytes:
    """The content of ``model.sig`` for ``meta``."""
    return _canonical({"key_id": signer.key_id, "signature": signer.sign(model_statement(meta))}) + b"\n"


def check_model_signature(meta: ModelMetadata, record: bytes | None, trust: Trust) -> str:
    """Verify a ``model.sig`` (``None``: absent) against ``meta``; the signing key's id."""
    signature = signer = None
    if record is not None:
        try:
            parsed = json.loads(record)
            signature, signer = str(parsed["signature"]), str(parsed["key_id"])
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"model {meta.version}: unreadable {SIGNATURE}") from None
    return trust.check(model_statement(meta), signature, signer, f"model {meta.version}")


def sign_event(event: ModelActivated, signer: Signer, when: datetime | None = None) -> ModelActivated:
    """``event`` with its announcement signed by ``signer`` (now, unless ``when``)."""
    when = as_utc(when or datetime.now(timezone.utc))
    signature = signer.sign(announcement_statement(event.metadata, event.reason, when))
    return event.model_copy(update={"announced_at": when, "signer": signer.key_id, "signature": signature})


def check_event_signature(event: ModelActivated, trust: Trust) -> str:
    """Verify an announcement's signature; the signing key's id (or ``"unsigned"`` in development)."""
    if event.signature and event.announced_at is None:
        raise ModelError(f"model {event.version}: a signed announcement without announced_at")
    statement = announcement_statement(event.metadata, event.reason, event.announced_at or datetime.now(timezone.utc))
    return trust.check(statement, event.signature, event.signer, f"announcement of model {event.version}")
