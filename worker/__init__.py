"""serq's engine and services: audio in, features, model, the AMQP worker and trainer.

Needs the ``serq[worker]`` extra (librosa, scikit-learn, soxr, ...). Data flows
one way: bytes -> :mod:`.audio` -> :mod:`.features` -> :mod:`.inference` -> reply.
"""
