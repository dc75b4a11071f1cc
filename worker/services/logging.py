"""Structured logs for the services: one event per line, with the request's correlation id.

``log(logger, "reply", request_id=..., code=...)`` writes ``event=reply request_id=... code=...``
as text, or one JSON object per line when ``SERQ_LOG_JSON=1``. Values are the
caller's; never pass a URL with a password (use ``Settings.redacted_amqp_url``).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00 INFO serq.worker reply request_id=ab12 code=ok``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        base = super().format(record)
        if not fields:
            return base
        head, sep, tail = base.partition("\n")  # keep a traceback below the fields
        return head + " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items()) + sep + tail


def _text(value) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def setup(level: str = "INFO", as_json: bool = False, stream=None) -> None:
    """Configure the root logger once for a service process (stderr, text or JSON)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def log(logger: logging.Logger, event: str, *, level: int = logging.INFO, exc_info=None, **fields) -> None:
    """Log ``event`` with structured ``fields`` (``request_id``, ``code``, ``ms``...)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)
