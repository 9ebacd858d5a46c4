"""The server's Prometheus metrics (``GET /metrics``), on a registry of its own.

Requests by adapter and status, the queue depth, batch sizes, request latency and generated tokens;
with the continuous scheduler also the running batch's occupancy and tokens in flight, each
request's time in the queue, and adapter loads.
Beside them, the same figures under TGI's names (``tgi_request_count``, ``tgi_request_success``,
``tgi_request_failure``, ``tgi_request_duration``, ``tgi_queue_size``, ``tgi_batch_next_size``,
``tgi_request_generated_tokens``), so TGI's dashboards read this server unchanged; they are
computed from ours at each scrape, never counted twice.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, UnknownMetricFamily

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
        self.queue_depth = queue_depth
        self.tgi = CollectorRegistry()
        self.tgi.register(_TgiNames(self))

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(self.tgi)


class _TgiNames:
    """Our figures under TGI's metric names (counters exported as TGI does, without ``_total``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        by_status: dict[str, float] = {}
        for sample in _samples(self.metrics.requests, "_total"):
            by_status[sample.labels["status"]] = by_status.get(sample.labels["status"], 0.0) + sample.value
        ok = by_status.get("200", 0.0)
        total = sum(by_status.values())
        for name, value, text in [
            ("tgi_request_count", total, "Requests answered."),
            ("tgi_request_success", ok, "Requests answered with 200."),
            ("tgi_request_failure", total - ok, "Requests answered with an error."),
        ]:
            family = UnknownMetricFamily(name, text)
            family.add_metric([], value)
            yield family
        yield GaugeMetricFamily("tgi_queue_size", "Requests waiting for a batch.", value=self.metrics.queue_depth())
        yield _histogram("tgi_request_duration", "Request latency in seconds.", self.metrics.latency)
        yield _histogram("tgi_batch_next_size", "Rows in each generation batch.", self.metrics.batch_size)
        tokens = sum(sample.value for sample in _samples(self.metrics.tokens, "_total"))
        family = UnknownMetricFamily("tgi_request_generated_tokens", "Tokens generated.")
        family.add_metric([], tokens)
        yield family


def _samples(metric, suffix: str):
    return [s for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]


def _histogram(name: str, text: str, metric) -> HistogramMetricFamily:
    """One histogram summed over ``metric``'s labels."""
    buckets: dict[str, float] = {}
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = buckets.get(sample.labels["le"], 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    ordered = sorted(buckets.items(), key=lambda item: float(item[0]))
    return HistogramMetricFamily(name, text, buckets=ordered, sum_value=total)
