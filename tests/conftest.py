"""Fixtures every test directory shares: the demo upstream, a real server on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clexproxy.demo_upstream import DemoServer, start_demo_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[DemoServer]:
    server = await start_demo_upstream("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()
