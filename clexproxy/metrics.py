"""Prometheus collectors for the request path (the observability issue widens this set).

Label sets are bounded: endpoint, model (from the catalog, so finite), status class. Never
an account or key id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """One registry per app, so several gateways in one process (tests) do not collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clexproxy_requests",
            "Proxied API requests by endpoint, model and status class.",
            ("endpoint", "model", "status_class"),
            registry=self.registry,
        )
        self.overhead = Histogram(
            "clexproxy_gateway_overhead_seconds",
            "Time spent in the gateway: total request time minus the upstream's share.",
            ("endpoint", "stream"),
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
