"""Prometheus text exposition for the service, with no dependency and no I/O.

A `Registry` holds counters, gauges and histograms keyed by label values; `render()` produces
the text format (version 0.0.4) that `GET /metrics` serves. Label sets are bounded by the
callers (outcomes, reasons and HTTP statuses are small closed sets), so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

LabelValues = tuple[str, ...]

# Latency buckets in milliseconds: fine below 50 ms (relay and added latency), coarse above
# (time to first token is dominated by the model).
MS_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    30000,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value):
        return str(int(value))
    return repr(value)


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {tuple(labels)}")
        return tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> Iterable[str]:  # pragma: no cover - overridden
        return ()


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_num(value)}"


class Gauge(_Metric):
    """A value that goes up and down (e.g. live sessions)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def add(self, amount: float, *labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, value: float, *labels: str) -> None:
        self._values[self._key(labels)] = value

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        if not self._values and not self.labelnames:
            yield f"{self.name} 0"
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_num(value)}"


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = MS_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            self._sums[key] = 0.0
        # Store per-bucket (non-cumulative) counts; render() accumulates.
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self._sums[key] += value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def samples(self) -> Iterable[str]:
        for key in sorted(self._counts):
            counts = self._counts[key]
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}"
            yield f"{self.name}_sum{_labels(self.labelnames, key)} {_num(self._sums[key])}"
            yield f"{self.name}_count{_labels(self.labelnames, key)} {running}"


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labelnames))

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = MS_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labelnames, buckets))

    def _add(self, metric: _M) -> _M:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The service's metrics, one instance per server process."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.sessions_active = r.gauge("realtime_sessions_active", "Sessions currently open.")
        self.sessions_total = r.counter("realtime_sessions_total", "Sessions opened.")
        self.connections_active = r.gauge(
            "realtime_connections_active", "WebSocket connections open, by role.", ["role"]
        )
        self.responses_total = r.counter(
            "realtime_responses_total",
            "Responses that reached a terminal state, by outcome and reason.",
            ["outcome", "reason"],
        )
        self.cancellations_total = r.counter(
            "realtime_cancellations_total", "Responses cancelled, by reason.", ["reason"]
        )
        self.speculations_total = r.counter(
            "realtime_speculations_total", "Eager speculative responses, by fate.", ["fate"]
        )
        self.ttft_ms = r.histogram(
            "realtime_time_to_first_token_ms",
            "Turn fired to first delta sent to clients, in milliseconds.",
        )
        self.added_latency_ms = r.histogram(
            "realtime_added_latency_ms",
            "Service time between a turn frame read and its gateway request sent, in milliseconds.",
        )
        self.gateway_errors_total = r.counter(
            "realtime_gateway_errors_total",
            "Gateway failures, by HTTP status (or kind).",
            ["status"],
        )
        self.client_errors_total = r.counter(
            "realtime_client_errors_total", "Error messages sent to clients, by code.", ["code"]
        )
        self.viewers_dropped_total = r.counter(
            "realtime_viewers_dropped_total", "Viewers disconnected for falling behind."
        )
        self.write_timeouts_total = r.counter(
            "realtime_write_timeouts_total",
            "Connections aborted because they did not accept queued data within the write "
            "deadline, by role.",
            ["role"],
        )
        self.connections_refused_total = r.counter(
            "realtime_connections_refused_total",
            "WebSocket upgrades refused before the upgrade, by code.",
            ["code"],
        )
        self.summaries_started_total = r.counter(
            "realtime_summaries_started_total",
            "Summary requests started, by kind (meeting: the rolling summary; memory: an "
            "assistant's folded context).",
            ["kind"],
        )
        self.summaries_total = r.counter(
            "realtime_summaries_total",
            "Summary requests that ended, by kind and outcome (done: it became the session's "
            "summary; dropped: failed, cancelled, empty or built on an older summary).",
            ["kind", "outcome"],
        )
        self.summary_latency_ms = r.histogram(
            "realtime_summary_latency_ms",
            "A meeting summary's request fired to its completion, in milliseconds.",
        )
        self.summary_chars = r.histogram(
            "realtime_summary_chars",
            "Size of each summary that became a session's summary, in characters.",
            buckets=(100, 300, 1000, 3000, 10000, 30000),
        )
        self.internal_errors_total = r.counter(
            "realtime_internal_errors_total",
            "Client messages whose handling failed inside the server (answered internal_error).",
        )

    def render(self) -> str:
        return self.registry.render()
