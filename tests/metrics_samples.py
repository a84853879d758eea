"""A Prometheus exposition read back as numbers, for the tests that check what the metrics say.

Why a helper: a test asks "how much of this metric has these labels", whether it rendered a real `Metrics` or
scraped a running gateway's ``/metrics``; the parse (by prometheus_client's own parser, not a regex) and the sum
over the samples whose labels include the asked ones are the same in both, so they are written once.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# (sample name, its labels sorted) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of the exposition `text`, by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample_total(found: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in found.items() if n == name and want <= set(lbl))
