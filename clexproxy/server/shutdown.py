"""Graceful shutdown: take no new work at once, let the calls in flight finish for the grace, then end the rest.

On SIGTERM or SIGINT, `drain`:
1. stops listening (new connections are refused, so the kernel's SO_REUSEPORT spread or the
   load balancer sends them elsewhere) and answers /readyz with 503;
2. closes idle keep-alive connections, and has every busy one close after its answer;
3. waits up to `shutdown_grace_seconds` for the calls in flight;
4. cuts what still runs: each call is cancelled with a mark on its request (`CUT`, which the
   handler and the relay read through `cut_by_shutdown`), from which the relay ends a stream with
   SPEC's 503 error event (`shutdown_error`), `data: [DONE]` and the chunked terminator, and a
   call not yet answered gets a 503 JSON; the access line says `status=503 error=shutdown`, not a
   client that left (499);
5. gives those last writes `CUT_SECONDS`, then aborts any connection still open (a client that
   does not read would otherwise hold the process).

aiohttp's own shutdown, left to itself, waited its timeout for the handlers, then cancelled
them and waited the timeout again (twice the grace), and a cancelled call looked exactly like a
client that left: a stream ended with no error event, no `[DONE]` and no chunked terminator.
It still runs afterwards (`AppRunner.cleanup`), on connections that are already done with.

The drain adds nothing to the request path: it finds the calls through aiohttp's own table of
connections, and the mark is read only when a call is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from clexproxy.errors import CUT

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from clexproxy.gateway import Gateway

log = logging.getLogger("clexproxy.server.shutdown")

CUT_SECONDS = 1.0  # for the cut calls' last writes, and again for aborted connections to let go


async def drain(runners: Iterable[web.BaseRunner], gateway: Gateway, grace: float) -> None:
    """Stop listening, let calls finish for `grace` seconds, cut the rest; the runners' cleanup follows."""
    gateway.ready = False
    servers: list[web.Server] = []
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()  # the listening socket closes now; connections already accepted go on
        if runner.server is not None:
            servers.append(runner.server)
    for server in servers:
        server.pre_shutdown()  # each connection closes after its current answer
        for conn in server.connections:
            if not conn._request_in_progress:
                conn.force_close()  # idle keep-alive: closed now (pre_shutdown left its socket open)
    busy = _busy(servers)
    if busy:
        log.info("waiting up to %.1f s for %d call(s) in flight", grace, len(busy))
        await asyncio.wait(busy.values(), timeout=grace)
    busy = _busy(servers)
    if not busy:
        return
    log.warning("shutdown grace of %.1f s over: ending %d call(s) still in flight with a 503", grace, len(busy))
    for conn, task in busy.items():
        request = conn._current_request
        if request is not None:
            request[CUT] = True
        task.cancel()
    await asyncio.wait(busy.values(), timeout=CUT_SECONDS)
    stuck = _busy(servers)
    for conn in stuck:
        if conn.transport is not None:
            conn.transport.abort()  # a client that does not read: its unsent bytes are dropped
    if stuck:
        await asyncio.wait(stuck.values(), timeout=CUT_SECONDS)


def _busy(servers: list[web.Server]) -> dict[RequestHandler, asyncio.Task[None]]:
    """Connections with a call in flight, with their request loop's task (it ends after the answer now)."""
    busy: dict[RequestHandler, asyncio.Task[None]] = {}
    for server in servers:
        for conn in server.connections:
            task = conn._task_handler
            if task is not None and not task.done() and conn._request_in_progress:
                busy[conn] = task
    return busy
