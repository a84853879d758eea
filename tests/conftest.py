"""Fixtures every test directory shares: the demo upstream and Redis, real servers on free loopback ports, and the
access logger at INFO (`access_enabled`: the level `serve` sets, which a test of written access lines needs)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clexproxy.demo.upstream import DemoServer, start_demo_upstream

from .redis_server import RedisServer


@pytest.fixture
async def upstream() -> AsyncIterator[DemoServer]:
    server = await start_demo_upstream("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server of the test's own, with AOF on; stopped after the test."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def access_enabled() -> Iterator[None]:
    """The access logger at INFO for the test, then back to its level."""
    access = logging.getLogger("clexproxy.access")
    level = access.level
    access.setLevel(logging.INFO)
    try:
        yield
    finally:
        access.setLevel(level)
