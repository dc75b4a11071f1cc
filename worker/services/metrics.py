"""Prometheus metrics and a health endpoint for a worker.

``GET /metrics`` serves the Prometheus text format, ``GET /healthz`` a small JSON:
200 while connected and consuming with nothing in flight past the time limit, 503
otherwise (``status`` says which). Each :class:`Metrics` has its own registry, so
tests can build several in one process.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger("serq.worker")

#: Latency buckets, seconds: a short clip takes tens of ms, a 60 s clip about a second.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The worker's counters and gauges (names below are part of the documented interface)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("serq_requests_total", "requests handled, by request type", ["type"], registry=r)
        self.errors = Counter("serq_errors_total", "error replies, by error code", ["code"], registry=r)
        self.latency = Histogram("serq_request_seconds", "time from delivery to ack, seconds", ["type"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("serq_in_flight", "requests delivered and not yet acked", registry=r)
        self.model = Gauge("serq_model_info", "the model serving requests (value 1)", ["version"], registry=r)
        self.swaps = Counter("serq_model_swaps_total", "models hot-swapped in", registry=r)
        self.refused = Counter("serq_model_refused_total",
                               "models refused (unsigned, untrusted key, replay, checksum, feature version...)",
                               registry=r)
        self.connected = Gauge("serq_connected", "1 while connected to the broker", registry=r)
        self.reconnects = Counter("serq_reconnects_total", "connections re-established after a loss", registry=r)
        self.dead_lettered = Counter("serq_dead_lettered_total",
                                     "deliveries nacked to the dead-letter exchange (undecodable, unanswerable)",
                                     registry=r)
        self.time_limited = Counter("serq_time_limit_exceeded_total", "requests interrupted by the time limit",
                                    registry=r)
        self._version: str | None = None
        self._connected = False
        #: ``() -> (consuming, seconds the oldest delivery has been in flight)``, set by the service.
        self.probe = lambda: (self._connected, 0.0)
        #: Past this many seconds in flight, a request makes the service unhealthy.
        self.time_limit_s = float("inf")

    def set_connected(self, connected: bool) -> None:
        self._connected = connected
        self.connected.set(1 if connected else 0)

    def set_model(self, version: str) -> None:
        if self._version is not None:
            self.model.remove(self._version)
        self.model.labels(version).set(1)
        self._version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict]:
        consuming, oldest = self.probe()
        if not self._connected:
            status = "disconnected"
        elif not consuming:
            status = "not consuming"
        elif oldest > self.time_limit_s:
            status = "stuck"
        else:
            status = "ok"
        body = {"status": status, "model_version": self._version, "oldest_in_flight_s": round(oldest, 1)}
        return (200 if status == "ok" else 503), body


#: What a taken port's warning tells each service to do (the setting it names is that service's own).
_PORT_ADVICE = {
    "worker": "give each worker its own SERQ_METRICS_PORT, or run one `serq worker --processes N`, which numbers "
              "the ports from SERQ_METRICS_PORT up",
    "trainer": "give each trainer its own SERQ_TRAINER_METRICS_PORT",
}


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0", *, service: str = "worker") -> ThreadingHTTPServer | None:
    """Serve ``/metrics`` and ``/healthz`` on a daemon thread; ``server.shutdown()`` stops it.

    A port already taken (a second ``serq worker`` on one host) is no reason to stop serving
    requests: one warning that says what to do (with ``service``'s own setting), and ``None``.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, metrics.render()
            elif self.path.split("?")[0] == "/healthz":
                status, payload = metrics.health()
                ctype, body = "application/json", json.dumps(payload).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /metrics or /healthz\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        logger.warning("metrics port %d is taken (another serq %s on this host?): serving requests without "
                       "/metrics and /healthz; %s", port, service, _PORT_ADVICE[service])
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="serq-metrics", daemon=True).start()
    return server
