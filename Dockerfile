# syntax=docker/dockerfile:1
# serq worker/trainer image: `docker build -t serq .` then `docker run serq` (= `serq worker`).
# Stage 1 builds serq's wheel and every dependency's wheel; stage 2 installs them offline
# into a slim runtime with no compiler, no source tree and no pip cache.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Only what the package is made of (see .dockerignore): no tests, samples or data.
COPY pyproject.toml README.md ./
COPY serq ./serq
COPY worker ./worker
COPY client ./client
COPY schemas ./schemas
COPY models ./models
RUN pip wheel --wheel-dir /wheels ".[worker]"

FROM python:${PYTHON_VERSION}-slim AS runtime
# libsndfile1 for soundfile (WAV/FLAC/OGG/MP3 decoding) on platforms whose wheel does not bundle it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "serq[worker]"
# A non-root user owns the writable places: the model registry (a named volume in
# docker-compose inherits this ownership), the feature cache, numba's JIT cache, and the
# folders docker-compose's setup service writes the signing keys and broker definitions to.
RUN useradd --create-home --uid 10001 --user-group serq \
 && mkdir -p /models /cache /tmp/numba /keys/signing /keys/trusted /definitions \
 && chown serq:serq /models /cache /tmp/numba /keys/signing /keys/trusted /definitions \
 && chmod 0700 /keys/signing
ENV SERQ_MODEL_DIR=/models \
    SERQ_CACHE_DIR=/cache \
    NUMBA_CACHE_DIR=/tmp/numba \
    PYTHONUNBUFFERED=1
USER serq
WORKDIR /home/serq
# The default model ships inside the wheel (serq/models/default): a worker serves at once.
CMD ["serq", "worker"]
