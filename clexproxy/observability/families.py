"""Metric families as plain dicts: what the request path updates, and how a scrape renders them.

A counter is `values[labels] += 1` and a histogram a list of per-bucket counts: nothing takes a
lock or formats a string until a scrape, where `render_family` hands prometheus-client its
metric families. `Metrics` declares which families exist; snapshots key a family's series by
its label values joined with `SEP`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

Labels = tuple[str, ...]
SEP = "\x1f"  # joins label values in snapshot keys; cannot occur in our label values


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames


class CounterVec(_Family):
    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        super().__init__(name, documentation, labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount


class GaugeVec(CounterVec):
    kind = "gauge"

    def dec(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) - amount

    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = value


class LowestGauge(GaugeVec):
    """A state each process reports, 1 for fine and 0 for not: a host's scrape shows its lowest (not the sum)."""


class HistogramVec(_Family):
    """Per label set: one non-cumulative count per bucket (the last is +Inf), then the sum."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = buckets
        self.values: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        slots = self.values.get(labels)
        if slots is None:
            slots = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        slots[bisect_left(self.bounds, value)] += 1.0
        slots[-1] += value


Family = CounterVec | HistogramVec


def add_slots(histogram: HistogramVec, labels: Labels, slots: list[float]) -> None:
    mine = histogram.values.get(labels)
    if mine is None:
        histogram.values[labels] = list(slots)
    else:
        for i, v in enumerate(slots):
            mine[i] += v


def render_family(fam: Family, series: dict[str, Any]) -> Iterable[Metric]:
    """One family's series (as snapshots key them: label values joined by `SEP`) as prometheus-client metrics."""
    def labels(key: str) -> list[str]:
        return key.split(SEP) if fam.labelnames else []

    if isinstance(fam, HistogramVec):
        h = HistogramMetricFamily(fam.name, fam.documentation, labels=fam.labelnames)
        for key, slots in series.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*fam.bounds, float("inf")), slots[:-1], strict=False):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            h.add_metric(labels(key), buckets, slots[-1])
        return [h]
    cls = GaugeMetricFamily if fam.kind == "gauge" else CounterMetricFamily
    m = cls(fam.name, fam.documentation, labels=fam.labelnames)
    for key, value in series.items():
        m.add_metric(labels(key), value)
    return [m]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
