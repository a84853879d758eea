"""Open-file budget: every proxied stream holds two sockets, so upstream connections get half.

A process that runs out of file descriptors fails everywhere at once: accept() stops taking
clients, upstream connects fail with EMFILE, the store cannot open its journal. Capping
upstream connections at half the open-file limit (less a reserve for listeners, the store,
logs and the event loop) makes a load beyond the limit wait for a connection, with
keep-alive comments for streams, instead of failing: the call goes out when another ends.

Client connections get the other half, less room to turn the next ones away: one beyond the cap
is accepted, answered 503 and closed (`connections.ClientConnection`). Past the limit itself,
accept() fails with EMFILE, and uvloop (libuv) then accepts each waiting connection only to close
it at once: measured with a limit of 128 and 300 clients, 190 got no answer at all.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("clexproxy.server.worker")

RESERVE = 64  # listeners, the store and its journal, logs, the event loop's own descriptors
TURN_AWAY_RESERVE = 64  # client connections over the cap, held a moment to be answered 503 and closed


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def upstream_connection_cap(configured: int, open_file_limit: int) -> int:
    """At most `configured`, and no more than one per client socket the open-file limit can also hold."""
    budget = max(1, (open_file_limit - RESERVE) // 2)
    return min(configured, budget)


def open_file_limit() -> int:
    """This process's soft open-file limit (`raise_open_file_limit` raised it at start)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def client_connection_cap(configured: int, open_file_limit: int) -> int:
    """`configured` when set (not 0); else the upstream half's twin, less the room to turn connections away."""
    if configured:
        return configured
    return max(1, (open_file_limit - RESERVE) // 2 - TURN_AWAY_RESERVE)
