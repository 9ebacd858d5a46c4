"""The server's Prometheus metrics (``GET /metrics``), on a registry of its own.

Requests by adapter and status, the queue depth, batch sizes, request latency and generated tokens;
with the continuous scheduler also the running batch's occupancy and tokens in flight, each
request's time in the queue, and adapter loads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "peft_hybrid_serve"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Counters the app and the worker update; ``render()`` is the ``/metrics`` body."""

    def __init__(self, queue_depth, in_flight=None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by adapter and HTTP status.",
            ["adapter", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "Time from a request's arrival to its last byte, by adapter.",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Rows in each generation batch.", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.tokens = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated, by adapter.", ["adapter"], registry=self.registry
        )
        depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a batch.", registry=self.registry)
        depth.set_function(queue_depth)
        self.queue_time = Histogram(
            f"{PREFIX}_queue_seconds",
            "Time from a request's arrival to its first decoder step.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.adapter_loads = Counter(
            f"{PREFIX}_adapter_loads",
            "Adapters loaded onto the base, by adapter.",
            ["adapter"],
            registry=self.registry,
        )
        if in_flight is not None:  # () -> (rows in the running batch, their input + max new tokens)
            rows = Gauge(f"{PREFIX}_batch_rows", "Rows in the running batch (occupancy).", registry=self.registry)
            rows.set_function(lambda: in_flight()[0])
            tokens = Gauge(
                f"{PREFIX}_batch_tokens", "Input + max new tokens of the rows in flight.", registry=self.registry
            )
            tokens.set_function(lambda: in_flight()[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)
