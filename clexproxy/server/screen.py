"""Refused calls answered from the raw request, before aiohttp's parser sees it.

A flood of calls with a bad key or a spent per-minute limit must cost the gateway little: it
is what a misbehaving client or an attack looks like. On the full path (`ProxyConnection`) each
such call is still parsed into a message, a body stream and a `ProxiedRequest`, run through
`handle` and answered from a rendered `web.Response`. Here the bytes of a
request are looked at as they arrive: when the key or the limit refuses it, the 429 or 401 is
written to the socket at once, with the same headers, body, metrics and access line as the
full path would give; every other request goes to aiohttp's parser unchanged.

Only a request that arrived whole, alone in one read, on a connection with nothing ahead of it
is screened (so answers never overtake one another), and only while some call was refused a
moment ago (`RecentRefusals`): otherwise the bytes go to aiohttp untouched.

The connection is a `ClientConnection`: SPEC's JSON for malformed HTTP,
time limits, the cap on connections. `GatewayRunner` sets those from the `client_*` settings, and
makes `ProxyConnection`s, which serve the proxied calls that pass the screen.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp.web_protocol import RequestHandler

from clexproxy.errors import ApiError, RateLimited
from clexproxy.fastpath.scan import plain_request
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import pick_request_id
from clexproxy.handlers.ingress import SCREENED_PATHS, Ingress
from clexproxy.handlers.settle import finish_call
from clexproxy.outbox import Outbox
from clexproxy.outcome import CallOutcome
from clexproxy.server.connections import ClientConnection, ClientServer
from clexproxy.server.raw_answers import RateLimitAnswers, raw_response

_SCREENED_LINES: dict[bytes, Ingress] = {f"POST {path} HTTP/1.1".encode(): i for path, i in SCREENED_PATHS.items()}
_RPM = "requests_per_minute"


class ScreeningRequestHandler(ClientConnection):
    """The gateway's connection protocol, answering refused calls before aiohttp's parser sees them.

    A request is screened only when aiohttp's parser holds nothing (`_at_boundary`: the
    connection's previous bytes were whole requests too), every request aiohttp was handed on
    this connection is answered (so answers stay in order), and the request arrived whole in one read.
    """

    def __init__(self, manager: ScreeningServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._screening = manager
        self._refusals = manager.gateway.refusals

    @property
    def idle(self) -> bool:
        """Every request aiohttp was handed is answered: an answer written now is in order."""
        return self._request_count == self._answered and not self._force_close and not self._close

    def data_received(self, data: bytes) -> None:
        # Keeps `_at_boundary` itself (ClientConnection's override would store it twice): aiohttp's parses.
        if not data:  # aiohttp re-running its parser on what it holds: nothing new arrived
            RequestHandler.data_received(self, data)
            return
        if not self._refusals.active():  # no refusal lately: nothing to screen, nor framing to follow
            self._at_boundary = False
            RequestHandler.data_received(self, data)
            return
        request = plain_request(data)
        if request is not None and self._at_boundary and self.idle:
            raw = self._screen(*request)
            if raw is not None:
                self.answer(raw)
                return
        self._at_boundary = request is not None
        RequestHandler.data_received(self, data)

    def _screen(self, line: bytes, authorization_bytes: bytes | None, sent_id: bytes | None) -> bytes | None:
        """The answer for a call its key or its spent per-minute limit refuses, counted as `handle` counts it.

        None sends the call down the full path, which authenticates it and counts it against the
        limit. Only calls whose Authorization header was refused a moment ago are looked at.
        """
        ingress = _SCREENED_LINES.get(line)
        if ingress is None:
            return None
        # aiohttp's own decoding of header values, so the refusal table sees the full path's strings.
        authorization = None if authorization_bytes is None else authorization_bytes.decode("utf-8", "surrogateescape")
        now = time.monotonic()
        refusals = self._refusals
        if not refusals.seen(authorization, now):
            return None
        gateway = self._screening.gateway
        call = CallOutcome(ingress.endpoint, now, api=ingress.api)
        try:
            key, account = gateway.directory.authenticate(authorization)
        except ApiError as error:
            call.status, call.error_code = error.status, error.code
            self._refused(call, authorization, sent_id)
            return raw_response(error, call.request_id)
        limited = gateway.limits.rpm_refusal(account)
        if limited is None:
            refusals.forget(authorization)
            return None
        call.account_id, call.key_id, call.plan = account.id, key.key_id, account.plan.name
        call.status, call.error_code, call.limit = RateLimited.status, RateLimited.code, _RPM
        self._refused(call, authorization, sent_id)
        bucket, remaining, wall = limited
        return self._screening.rate_limits.render(account.plan, bucket, remaining, wall, call.request_id)

    def _refused(self, call: CallOutcome, authorization: str | None, sent_id: bytes | None) -> None:
        """Count and log a screened refusal, and remember its Authorization header a while longer."""
        self._refusals.note(authorization, call.started)
        # Latin-1 maps every byte; a client id that is not plain printable ASCII is replaced either way.
        call.request_id = pick_request_id(None if sent_id is None else sent_id.decode("latin-1"))
        screening = self._screening
        screening.screened += 1
        screening.gateway.metrics.call_started(call.endpoint)
        finish_call(screening.gateway, call)

    def answer(self, raw: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._screening.outbox.write(transport, raw)
            # The connection was just used: its keep-alive clock starts again, as after any answer.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout


class ScreeningServer(ClientServer):
    """aiohttp's low-level server, making `ScreeningRequestHandler`s."""

    def __init__(self, *args: Any, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.screened = 0  # calls answered from the raw request
        self.outbox = Outbox(self._loop)  # answers leave at the end of the loop's turn
        self.rate_limits = RateLimitAnswers()

    def __call__(self) -> RequestHandler:
        return ScreeningRequestHandler(self, loop=self._loop, **self._kwargs)
