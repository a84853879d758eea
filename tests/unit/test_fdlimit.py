"""Upstream connections never take more than half the open-file limit."""

from __future__ import annotations

import resource

from clexproxy.server.fdlimit import RESERVE, raise_open_file_limit, upstream_connection_cap


def test_cap_is_half_the_limit_less_the_reserve() -> None:
    assert upstream_connection_cap(16384, 20_000) == (20_000 - RESERVE) // 2
    assert upstream_connection_cap(100, 20_000) == 100  # the configured value when it is lower
    assert upstream_connection_cap(16384, 1_048_576) == 16384
    assert upstream_connection_cap(16384, 10) == 1  # never zero: a tiny limit still serves one call at a time


def test_raise_open_file_limit_reaches_the_hard_limit() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft = raise_open_file_limit()
        now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == now_soft and (hard == resource.RLIM_INFINITY or now_soft == hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
