"""Prometheus metrics of one server app (its own ``CollectorRegistry``, so apps never collide).

Exposed at ``GET /metrics``:

* ``anystep_requests_total{route, model, steps, status}`` — requests answered;
* ``anystep_request_latency_seconds{model, steps}`` — end-to-end latency of successful
  generate/encode requests;
* ``anystep_engine_batch_size{model}`` — rows per engine call (step-level batching at work);
* ``anystep_engine_call_seconds{model}`` — wall time per engine call;
* ``anystep_queue_depth{model}`` — requests waiting for their first tick;
* ``anystep_inflight_requests{model}`` — requests submitted and not finished.

Label values are bounded: ``model`` is a served model name or ``"-"``, ``steps`` an
integer up to the server's maximum or ``"-"``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _TickCounts:
    """Per-bucket counts and sum of one tick histogram of one model (plain lists, no lock).

    Ticks of a model are observed by one thread at a time (its scheduler's), so the hot path
    is a :func:`bisect.bisect_left` and two additions; a scrape copies the lists.
    """

    __slots__ = ("counts", "total")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.total = 0.0


class TickHistograms:
    """``anystep_engine_batch_size`` and ``anystep_engine_call_seconds`` as one custom collector.

    A ``prometheus_client.Histogram`` takes a lock and walks its buckets in Python on every
    ``observe``; an engine tick (a few per request) only bumps two counters here, and the
    exposition (the same names, labels and buckets as two histograms) is built at scrape time.
    """

    def __init__(self, batch_buckets: Sequence[float], second_buckets: Sequence[float]) -> None:
        self.batch_buckets = tuple(float(b) for b in batch_buckets)
        self.second_buckets = tuple(float(b) for b in second_buckets)
        self._models: dict[str, tuple[_TickCounts, _TickCounts]] = {}

    def observe(self, model: str, rows: int, seconds: float) -> None:
        """One engine call of ``rows`` rows taking ``seconds``."""
        pair = self._models.get(model)
        if pair is None:
            pair = self._models[model] = (_TickCounts(len(self.batch_buckets)), _TickCounts(len(self.second_buckets)))
        rows_h, sec_h = pair
        rows_h.counts[bisect.bisect_left(self.batch_buckets, rows)] += 1  # le semantics: rows <= bound
        rows_h.total += rows
        sec_h.counts[bisect.bisect_left(self.second_buckets, seconds)] += 1
        sec_h.total += seconds

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily("anystep_engine_batch_size", "Rows per engine call (samples fused across requests).",
                                    labels=("model",))
        yield HistogramMetricFamily("anystep_engine_call_seconds", "Wall time of one engine call.", labels=("model",))

    def collect(self) -> Iterator[Metric]:
        rows_f, sec_f = self.describe()
        for model, (rows_h, sec_h) in list(self._models.items()):
            for fam, h, bounds in ((rows_f, rows_h, self.batch_buckets), (sec_f, sec_h, self.second_buckets)):
                counts, total = list(h.counts), h.total
                cum, buckets = 0, []
                for bound, c in zip((*bounds, float("inf")), counts):
                    cum += c
                    buckets.append((floatToGoString(bound), cum))
                fam.add_metric([model], buckets, total)
        yield rows_f
        yield sec_f


class ServerMetrics:
    """The collectors of one app.

    Attributes:
        registry: the app's own registry.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple, tuple] = {}  # label values -> bound collectors (no per-request lookup)
        self.requests = Counter(
            "anystep_requests",
            "Requests answered, by route, model, steps and HTTP status.",
            ("route", "model", "steps", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "anystep_request_latency_seconds",
            "End-to-end latency of successful generate/encode requests.",
            ("model", "steps"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ticks = TickHistograms(BATCH_BUCKETS, LATENCY_BUCKETS)
        self.registry.register(self.ticks)
        self.queue_depth = Gauge(
            "anystep_queue_depth",
            "Requests waiting for their first tick.",
            ("model",),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "anystep_inflight_requests",
            "Requests submitted and not finished.",
            ("model",),
            registry=self.registry,
        )

    def observe_request(
        self, route: str, model: str, steps: int | str | None, status: int, seconds: float | None
    ) -> None:
        """Count one answered request (and its latency when it succeeded)."""
        key = ("r", route, model, steps, status)
        bound = self._children.get(key)
        if bound is None:
            steps_label = str(steps) if steps is not None else "-"
            counter = self.requests.labels(route=route, model=model or "-", steps=steps_label, status=str(status))
            hist = None
            if 200 <= status < 300 and route in ("/generate", "/encode"):
                hist = self.latency.labels(model=model or "-", steps=steps_label)
            bound = self._children[key] = (counter, hist)
        bound[0].inc()
        if seconds is not None and bound[1] is not None:
            bound[1].observe(seconds)

    def observe_tick(self, model: str, rows: int, seconds: float) -> None:
        """Record one engine call (:class:`TickHistograms`: no lock, no formatting)."""
        self.ticks.observe(model, rows, seconds)

    def set_queue(self, model: str, depth: int, inflight: int) -> None:
        """Update the queue gauges of one model."""
        self.queue_depth.labels(model=model).set(depth)
        self.inflight.labels(model=model).set(inflight)

    def render(self) -> bytes:
        """Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
