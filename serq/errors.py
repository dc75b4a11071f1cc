"""Typed errors. Every failure serq reports carries a stable ``code``.

The codes are part of the message contract (error replies carry them), so
clients can branch on them; the messages are for people.
"""

from __future__ import annotations


class SerqError(Exception):
    """Base class: a failure with a stable machine-readable ``code``."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class AudioError(SerqError):
    """The audio could not be used. Subclasses name why."""

    code = "bad_audio"


class EmptyAudio(AudioError):
    code = "empty"


class TooLarge(AudioError):
    code = "too_large"


class TooLong(AudioError):
    code = "too_long"


class TooShort(AudioError):
    code = "too_short"


class UnsupportedFormat(AudioError):
    code = "unsupported_format"


class BadAudio(AudioError):
    code = "bad_audio"


class InvalidRequest(SerqError):
    code = "invalid_request"


class ModelError(SerqError):
    """A model artifact is missing, tampered with, or of another feature layout."""

    code = "model_error"


class DatasetError(SerqError):
    """A training/evaluation dataset is missing, empty, or unusable."""

    code = "dataset_error"


class MissingExtra(SerqError):
    """A module from an install extra is missing (``pip install 'serq[worker]'`` and the like)."""

    code = "missing_extra"


class Overloaded(SerqError):
    code = "overloaded"


class TimeLimit(SerqError):
    """A training job ran longer than ``SERQ_TRAIN_TIME_LIMIT_S``."""

    code = "time_limit"


class JobCancelled(SerqError):
    """A training job was stopped between two steps (the trainer is shutting down); it is not answered
    but handed back to the queue, so it runs again."""

    code = "cancelled"


class TimeLimitExceeded(TimeLimit):
    """A request ran past the worker's per-request time limit (``SERQ_TIME_LIMIT_S``) and was interrupted."""

    def __init__(self, message: str = "the request ran past the worker's time limit (SERQ_TIME_LIMIT_S) and was "
                 "interrupted", **kwargs):  # raised asynchronously, as a class: a default message
        super().__init__(message, **kwargs)


#: Every code a reply may carry, with a one-line meaning (documented in the contract).
ERROR_CODES: dict[str, str] = {
    "empty": "the request body or audio is empty",
    "not_found": "the file does not exist or cannot be read (CLI only)",
    "too_large": "the body exceeds SERQ_MAX_BYTES",
    "too_long": "the audio exceeds SERQ_MAX_SECONDS",
    "too_short": "the audio is shorter than one analysis window",
    "unsupported_format": "the bytes are not WAV, FLAC, OGG/Vorbis or MP3",
    "bad_audio": "the audio decodes but is unusable (NaN/inf samples, corrupt data)",
    "invalid_request": "the message breaks the contract (content type, headers, JSON)",
    "model_error": "a model artifact failed verification",
    "dataset_error": "a training dataset is missing, empty or unusable",
    "unknown_emotion": "an emotion name outside serq's 8",
    "bad_hyperparameter": "a training hyperparameter is out of range",
    "overloaded": "the worker refused the request (limits)",
    "time_limit": "a request ran past the worker's time limit (SERQ_TIME_LIMIT_S) and was interrupted, "
                  "or a training job ran longer than SERQ_TRAIN_TIME_LIMIT_S",
    "internal": "an unexpected failure inside serq (a bug; see the worker log)",
}


# The client library's errors (re-exported by serq.client): here, so that the transport layer
# can raise them without importing the client.
class ClientError(SerqError):
    """Base class of everything :class:`serq.client.Client` raises."""

    code = "client_error"


class BrokerUnavailable(ClientError):
    """No connection to RabbitMQ could be made (wrong SERQ_AMQP_URL, broker down, bad credentials)."""

    code = "no_broker"


class ConnectionLost(ClientError):
    """The connection dropped and could not be restored before the deadline."""

    code = "connection_lost"


class Timeout(ClientError):
    """No reply within the timeout (usually: no worker is running)."""

    code = "timeout"


class NotDeclared(ClientError):
    """A shared queue or exchange does not exist: whoever declares it (a worker, the trainer) has never
    started for this prefix. Clients use what workers and the trainer declare, never create or delete it;
    ``code`` is ``no_worker`` or ``no_trainer``."""

    code = "no_worker"


class ServiceError(ClientError):
    """The worker answered with an error reply; ``code`` is the reply's code (``too_long``, ...).

    ``reply`` holds the whole :class:`serq.schemas.ErrorReply` (``request_id``, ``worker``).
    """

    def __init__(self, message: str, *, code: str, reply=None):
        super().__init__(message, code=code)
        self.reply = reply
