"""Settings from the environment, one prefix (``SERQ_``), typed and validated.

Every field here is documented in the README's configuration table; keep the
two in step (``tests/test_settings.py`` checks it).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


#: A timeline classifies each second of speech at most this many times (``window_s / hop_s``).
TIMELINE_MAX_OVERLAP = 4.0


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


class Settings(BaseSettings):
    # hide_input_in_errors: a bad SERQ_STATE_KEY or SERQ_AMQP_URL (secrets) is never echoed in an error.
    model_config = SettingsConfigDict(env_prefix="SERQ_", extra="ignore", hide_input_in_errors=True)

    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        description="RabbitMQ URL, or a comma-separated list of a cluster's node URLs (tried in shuffled order); "
        "credentials belong here or in the environment, never in code",
    )
    prefix: str = Field("serq", description="prefix of every queue and exchange name", pattern=r"^[A-Za-z0-9_.-]+$")
    model_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "serq" / "models",
        description="model registry (versions, active pointer); a shared volume in docker-compose",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "serq",
        description="feature cache for training, keyed by file content hash and feature version",
    )
    data_roots: str = Field("", description="colon-separated directories a training request may read from")
    ravdess_dir: Path = Field(Path("../shared/data/ravdess"), description="RAVDESS corpus used by tests and `serq models build-default`")
    turev_dir: Path = Field(Path("../shared/data/turev"), description="TurEV-DB corpus for cross-corpus evaluation (tests, bench; never for training a shipped model)")
    zenodo_url: str = Field("https://zenodo.org", description="Zenodo base URL `serq data download` reads records and files from")
    max_bytes: int = Field(32 * 1024 * 1024, gt=0, description="largest accepted clip, in bytes")
    max_seconds: float = Field(60.0, gt=0, description="longest accepted clip, in seconds")
    max_recording_seconds: float = Field(4 * 3600.0, gt=0, description="longest recording `serq timeline` accepts")
    timeline_window_s: float = Field(3.0, ge=0.5, le=30.0, description="`serq timeline`: classification window, seconds")
    timeline_hop_s: float = Field(2.0, ge=0.1, le=30.0, description="`serq timeline`: step between windows, seconds (<= window)")
    timeline_max_pause_s: float = Field(1.0, ge=0.1, le=10.0, description="`serq timeline`: a pause up to this long stays inside a speech segment, seconds")
    prefetch: int = Field(4, ge=1, le=1000, description="requests in flight per worker (AMQP prefetch)")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics and /healthz port of the worker; 0 disables")
    trainer_metrics_port: int = Field(9109, ge=0, le=65535,
                                      description="Prometheus /metrics and /healthz port of the trainer; 0 disables")
    time_limit_s: float = Field(60.0, gt=0, le=3600,
                                description="longest a request may stay in flight on a worker: past it the compute is "
                                "interrupted (`time_limit` reply) and /healthz reports 503")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool = Field(False, description="structured JSON log lines instead of plain text")
    worker_id: str = Field("", description="name a worker signs its replies with; empty = <hostname>-<pid>")
    heartbeat: int = Field(30, ge=0, le=600, description="AMQP heartbeat interval, seconds (0 disables heartbeats)")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest wait between reconnection attempts, seconds")
    delivery_limit: int = Field(5, ge=1, le=1000, description="deliveries of one request before it is dead-lettered to <prefix>.dead")
    request_timeout: float = Field(30.0, gt=0, description="seconds a client waits for a reply (`serq classify --timeout`)")
    state_key: SecretStr | None = Field(
        None,
        description="secret the workers of a deployment share to seal timeline stream states (the same on every "
        "worker); unset: a random per-process key, so a stream stays on one worker (logged as a warning)",
    )
    train_max_file_bytes: int = Field(64 * 1024 * 1024, gt=0, description="trainer: largest training file read, in bytes (larger ones are skipped)")
    train_max_file_seconds: float = Field(60.0, gt=0, description="trainer: longest training clip, in seconds (longer ones are skipped)")
    train_time_limit_s: float = Field(4 * 3600.0, gt=0, description="trainer: a job running longer fails with `time_limit` (checked between files and folds)")
    signing_key: str = Field("", description="Ed25519 private key (`serq keys generate`) that signs the models this process registers or announces")
    trusted_keys: str = Field("", description="colon-separated `.pub` files; a worker accepts only models signed by one of them")
    allow_unsigned_models: bool = Field(False, description="development only: accept unsigned model announcements (logged at start-up)")
    max_model_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest model artifact a worker reads or decodes, in bytes")

    state_key_previous: SecretStr | None = Field(
        None,
        description="keys a timeline stream state may still be sealed with (comma-separated): accepted, never "
        "used to seal; to rotate SERQ_STATE_KEY without ending streams, move the old key here for a while",
    )

    @field_validator("state_key", "state_key_previous", mode="before")
    @classmethod
    def _unset_if_empty(cls, value):
        return None if value in ("", None) else value  # SERQ_STATE_KEY= (e.g. compose's empty default): unset

    @field_validator("state_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random secret shared by the deployment's workers)")
        return value

    @model_validator(mode="after")
    def _timeline(self) -> "Settings":
        if self.timeline_hop_s > self.timeline_window_s:
            raise ValueError("SERQ_TIMELINE_HOP_S must not exceed SERQ_TIMELINE_WINDOW_S")
        if self.timeline_window_s > TIMELINE_MAX_OVERLAP * self.timeline_hop_s:
            raise ValueError(f"SERQ_TIMELINE_WINDOW_S must not exceed {TIMELINE_MAX_OVERLAP:g} x SERQ_TIMELINE_HOP_S")
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def trusted_key_paths(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.trusted_keys.split(":") if p.strip()]

    @property
    def data_root_paths(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.data_roots.split(":") if p.strip()]

    def name(self, suffix: str) -> str:
        """A queue/exchange name under this deployment's prefix: ``name("classify") -> "serq.classify"``."""
        return f"{self.prefix}.{suffix}"

    @property
    def redacted_amqp_url(self) -> str:
        return redact_url(self.amqp_url)


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``: safe to log.

    A comma-separated list (a cluster's nodes) has every URL redacted.
    """
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    try:
        parts = urlsplit(url.strip())
        password, port = parts.password, parts.port
    except ValueError:  # not parseable (a bad port...): show nothing of the credentials part
        return "<unparseable URL>" if "@" in url else url
    if password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
