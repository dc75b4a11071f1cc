"""Which install extra brings which module, so a missing one becomes an install hint, not a traceback.

The base install is what an assistant imports (pika, pydantic, numpy, soundfile). The engine,
the services and the bot need extras; a command that reaches for one of their modules in a base
install gets :class:`serq.errors.MissingExtra` naming the extra to install.
"""

from __future__ import annotations

from serq.errors import MissingExtra

#: Top-level import name -> the extra that installs it (pyproject's optional dependencies).
EXTRA_OF_MODULE: dict[str, str] = {
    "librosa": "worker", "soxr": "worker", "scipy": "worker", "sklearn": "worker", "skops": "worker",
    "joblib": "worker", "threadpoolctl": "worker", "prometheus_client": "worker",
    "numba": "worker", "audiomentations": "worker", "pyroomacoustics": "worker",
    "simpleaudio": "bot", "plotext": "bot", "matplotlib": "bot",
    "aio_pika": "async", "pipecat": "pipecat",
}


def missing_extra(exc: ModuleNotFoundError, what: str = "this command") -> MissingExtra | None:
    """The install hint for ``exc``, or ``None`` when the missing module is no extra's (a real bug)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return MissingExtra(f"{what} needs the {extra!r} extra (no module {top!r}): pip install 'serq[{extra}]'")
