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
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
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


class _Counts:
    """Bucket counts and sum of one labelled histogram child (plain lists, no lock).

    Each child is observed by one thread (a scheduler's ticks, or the event loop's requests), so the
    hot path is a :func:`bisect.bisect_left` and two additions; a scrape copies the list.
    """

    __slots__ = ("counts", "total")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.total = 0.0


class LockFreeHistogram:
    """A labelled Prometheus histogram whose observations cost two list updates.

    ``prometheus_client.Histogram`` takes a lock and walks its buckets in Python on every
    ``observe``; this one does a binary search and builds the exposition (the same names,
    labels and buckets) at scrape time. Register it on a ``CollectorRegistry``.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], _Counts] = {}

    def child(self, *labels: str) -> _Counts:
        """The bound child of these label values (keep it: :meth:`observe_child` is the hot path)."""
        c = self._children.get(labels)
        if c is None:
            c = self._children[labels] = _Counts(len(self.buckets))
        return c

    def observe_child(self, child: _Counts, value: float) -> None:
        """One observation (``le`` semantics: a value on a bound counts in that bucket)."""
        child.counts[bisect.bisect_left(self.buckets, value)] += 1
        child.total += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, c in list(self._children.items()):
            counts, total = list(c.counts), c.total
            cum, buckets = 0, []
            for bound, n in zip((*self.buckets, float("inf")), counts):
                cum += n
                buckets.append((floatToGoString(bound), cum))
            fam.add_metric(list(labels), buckets, total)
        yield fam


class LockFreeCounter:
    """A labelled Prometheus counter whose increments are one list update (see :class:`LockFreeHistogram`)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], list[float]] = {}

    def child(self, *labels: str) -> list[float]:
        """The bound child (a one-element list) of these label values."""
        c = self._children.get(labels)
        if c is None:
            c = self._children[labels] = [0.0]
        return c

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, c in list(self._children.items()):
            fam.add_metric(list(labels), c[0])
        yield fam


class ServerMetrics:
    """The collectors of one app.

    Attributes:
        registry: the app's own registry.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple, tuple] = {}  # label values -> bound collectors (no per-request lookup)
        self.requests = LockFreeCounter(
            "anystep_requests", "Requests answered, by route, model, steps and HTTP status.",
            ("route", "model", "steps", "status"),
        )
        self.latency = LockFreeHistogram(
            "anystep_request_latency_seconds", "End-to-end latency of successful generate/encode requests.",
            ("model", "steps"), LATENCY_BUCKETS,
        )
        self.batch_size = LockFreeHistogram(
            "anystep_engine_batch_size", "Rows per engine call (samples fused across requests).", ("model",),
            BATCH_BUCKETS,
        )
        self.engine_seconds = LockFreeHistogram(
            "anystep_engine_call_seconds", "Wall time of one engine call.", ("model",), LATENCY_BUCKETS
        )
        for c in (self.requests, self.latency, self.batch_size, self.engine_seconds):
            self.registry.register(c)
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
            counter = self.requests.child(route, model or "-", steps_label, str(status))
            hist = None
            if 200 <= status < 300 and route in ("/generate", "/encode"):
                hist = self.latency.child(model or "-", steps_label)
            bound = self._children[key] = (counter, hist)
        bound[0][0] += 1.0
        if seconds is not None and bound[1] is not None:
            self.latency.observe_child(bound[1], seconds)

    def observe_tick(self, model: str, rows: int, seconds: float) -> None:
        """Record one engine call (two list updates per histogram, no lock)."""
        self.tick_observer(model)(rows, seconds, 0)

    def tick_observer(self, model: str) -> Callable[[int, float, int], None]:
        """A scheduler's ``on_tick(rows, seconds, jobs)`` for ``model``: :meth:`observe_tick` with the
        model's histogram children looked up once."""
        bound = self._children.get(("t", model))
        if bound is None:
            bound = self._children[("t", model)] = (self.batch_size.child(model), self.engine_seconds.child(model))
        rows_child, seconds_child = bound
        observe_rows, observe_seconds = self.batch_size.observe_child, self.engine_seconds.observe_child

        def on_tick(rows: int, seconds: float, _jobs: int) -> None:
            observe_rows(rows_child, rows)
            observe_seconds(seconds_child, seconds)

        return on_tick

    def set_queue(self, model: str, depth: int, inflight: int) -> None:
        """Update the queue gauges of one model."""
        self.queue_depth.labels(model=model).set(depth)
        self.inflight.labels(model=model).set(inflight)

    def render(self) -> bytes:
        """Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
