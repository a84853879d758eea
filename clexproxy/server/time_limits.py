"""The client time limits both connections keep: their settings, the head's 408, and a body's stall mark.

aiohttp's connections (`ClientConnection`) and the lean ones (`LeanConnection`) are looked at by the
server's one timer (`ClientServer._tick`); what a look decides is the same for both, and lives here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from clexproxy.config import Settings
from clexproxy.errors import RequestTimeout
from clexproxy.handlers.common import pick_request_id
from clexproxy.proxied_request import Body
from clexproxy.server.fdlimit import client_connection_cap
from clexproxy.server.raw_answers import raw_response

log = logging.getLogger("clexproxy.server.connections")

_CLOSE = {"Connection": "close"}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may idle or stall, and how many may be connected at once.

    >>> ConnectionLimits(header_timeout=10.0, body_timeout=30.0).look_every
    5.0
    >>> ConnectionLimits(keepalive_timeout=0.5).look_every
    0.25
    """

    keepalive_timeout: float = 75.0
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_connections: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings, open_file_limit: int) -> ConnectionLimits:
        return cls(
            settings.client.keepalive_timeout,
            settings.client.header_timeout,
            settings.client.body_timeout,
            client_connection_cap(settings.client.max_connections, open_file_limit),
        )

    @property
    def look_every(self) -> float:
        """Seconds between two looks at a connection: a limit is overrun by half of the smallest at most."""
        return min(self.header_timeout, self.body_timeout, self.keepalive_timeout) / 2


def time_out_head(transport: asyncio.Transport | None, limits: ConnectionLimits, peer: str) -> None:
    """The 408 for a head that did not come whole within the header timeout (the caller closes the connection)."""
    error = RequestTimeout(f"The request's head did not arrive whole within {limits.header_timeout:g} seconds.")
    error.headers.update(_CLOSE)
    rid = pick_request_id(None)
    if transport is not None and not transport.is_closing():
        transport.write(raw_response(error, rid))
    log.info("request head timed out from %s: 408 (request_id=%s)", peer, rid)


# A body as a look saw it: the body, its bytes so far, and when that count was first seen.
BodyMark = tuple[Body, int, float]


def mark_body(body: Body, mark: BodyMark | None, now: float, limits: ConnectionLimits) -> BodyMark | None:
    """Where a body being read stands at a look (`mark`, the last look's); None once it has timed out.

    A body no byte of which came for a body timeout has its read failed with the 408 the handler answers.
    """
    total = body.total_bytes
    if mark is None or mark[0] is not body or mark[1] != total:
        return body, total, now
    if now - mark[2] < limits.body_timeout - 0.001:
        return mark
    body.set_exception(
        RequestTimeout(f"The request body stopped arriving: nothing came for {limits.body_timeout:g} seconds.")
    )
    return None
