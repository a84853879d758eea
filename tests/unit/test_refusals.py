"""The screen's hint: refused Authorization headers, for a second, by hash."""

from __future__ import annotations

import time

from clexproxy.limits import refusals
from clexproxy.limits.refusals import RecentRefusals


def test_a_refusal_is_remembered_for_the_ttl_only() -> None:
    recent = RecentRefusals()
    recent.note("Bearer clex_a", 100.0)
    assert recent.seen("Bearer clex_a", 100.5)
    assert not recent.seen("Bearer clex_b", 100.5)
    assert not recent.seen("Bearer clex_a", 100.0 + refusals.TTL_SECONDS + 0.001)
    assert len(recent) == 0 and not recent  # an expired entry leaves the table when it is looked at


def test_forget_and_missing_header() -> None:
    recent = RecentRefusals()
    recent.note(None, 1.0)
    recent.note("Bearer x", 1.0)
    assert recent.seen(None, 1.1)
    recent.forget("Bearer x")
    assert not recent.seen("Bearer x", 1.1) and len(recent) == 1


def test_a_flood_of_distinct_headers_cannot_grow_it_without_bound() -> None:
    recent = RecentRefusals()
    for i in range(refusals.MAX_ENTRIES + 10):
        recent.note(f"Bearer clex_{i}", 1.0)
    assert len(recent) <= refusals.MAX_ENTRIES


def test_a_table_of_expired_refusals_empties_itself() -> None:
    recent = RecentRefusals()
    assert not recent.active()
    recent.note("Bearer a", time.monotonic())
    assert recent.active()
    recent.note("Bearer b", time.monotonic() - 2 * refusals.TTL_SECONDS)  # noted long ago
    recent.note("Bearer a", time.monotonic() - 2 * refusals.TTL_SECONDS)
    assert not recent.active() and len(recent) == 0
