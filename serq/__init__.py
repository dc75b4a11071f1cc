"""serq: speech emotion recognition served over a message queue.

The base package is light (pika, pydantic, numpy, soundfile). The audio/ML
engine lives in :mod:`serq.worker` and needs the ``serq[worker]`` extra.
"""

from serq.labels import EMOTIONS

__version__ = "0.1.0"
__all__ = ["EMOTIONS", "__version__"]
