"""Client connections held to limits: malformed requests, slow or idle clients, and too many of them.

aiohttp's connection protocol (`RequestHandler`) answers what its parser refuses with a text/plain
400 that quotes the offending line (an `Authorization` header with a control character: the key
in full) and logs an ERROR traceback quoting it again; any client can send one, without a key.
`ClientConnection` answers every such request with SPEC's JSON error instead: 400 for bad syntax
or framing, 413 for a `Content-Length` too large to be one, 431 for too many or too long headers,
501 for a transfer coding other than chunked alone (RFC 9112), each with a new X-Request-Id and
`Connection: close`, and logs one line in our words: never a byte of the request. So do the
text answers aiohttp builds after parsing (its router's 404 for a path no route can match, such
as one with `%0A`): SPEC's JSON, the client's X-Request-Id.

Time limits (`ConnectionLimits`, the `client_*` settings):
- keep-alive: a connection idle that long is closed (aiohttp's own timer for its connections, whose
  default is an hour; the server's look for a lean one, within half the smallest limit after it);
- header: a request head must arrive whole within it of its first byte, or the client gets a 408;
- body: a body silent that long fails the call with a 408 (the handler's read raises it).

The head and body limits add nothing to the request path: one timer for the whole server looks at
every connection every half of the smallest limit (`ClientServer._tick`, `ClientConnection._look`;
a timer per connection cost ~0.5 KB of each of 10,000 open streams) at what the path records
anyway: whether bytes came since the last look (`_at_boundary`, set by `data_received`), how many
heads aiohttp parsed, and the body's byte count. A head is cut at one to one and a half header
timeouts after its first byte came; one pipelined behind another request is left to the keep-alive
timer.

The cap: with `max_connections` open, a new connection is answered 503 with Retry-After and closed
instead of being taken on until the process runs out of file descriptors, when uvloop closes
waiting connections with no answer at all (`client_connection_cap`). The connection is read from until
the client closes it, two seconds at most, so the answer is not lost to a reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from multidict import CIMultiDictProxy

from clexproxy.errors import (
    ApiError,
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
    UnsupportedTransferCoding,
)
from clexproxy.handlers.common import pick_request_id, request_id
from clexproxy.server.fdlimit import TURN_AWAY_RESERVE
from clexproxy.server.raw_answers import raw_response
from clexproxy.server.time_limits import BodyMark, ConnectionLimits, mark_body, time_out_head

log = logging.getLogger("clexproxy.server.connections")

TURN_AWAY_LINGER = 2.0  # seconds a connection over the cap is read from after its 503, at most
CAP_LOG_EVERY = 10.0  # one warning line per this many seconds while connections are turned away
_CLOSE = {"Connection": "close"}


def parser_refusal(exc: HttpProcessingError, handler: RequestHandler) -> ApiError:
    """SPEC's error for a request aiohttp's parser refused, in our words: `exc`'s text quotes the request."""
    if isinstance(exc, LineTooLong):
        if _in_request_line(exc, handler):
            return InvalidRequest(f"The request line is longer than {handler.max_line_size} bytes.")
        return HeadersTooLarge(f"A request header is longer than {handler.max_field_size} bytes.")
    if isinstance(exc, ContentEncodingError):
        return InvalidRequest(
            "The request's Content-Encoding is not one this gateway decodes: send the body uncompressed, "
            "or gzip or deflate encoded.",
            extra={"param": "Content-Encoding"},
        )
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in exc.message:
            return InvalidRequest("This port speaks plain HTTP: the request was TLS (HTTPS).")
        return InvalidRequest("The request method is not a valid HTTP method.")
    if isinstance(exc, BadStatusLine):
        return InvalidRequest("The request line is not valid HTTP/1.1.")
    if isinstance(exc, InvalidURLError):
        return InvalidRequest("The request target is not a valid path.")
    if isinstance(exc, InvalidHeader):
        return InvalidRequest("A request header is malformed.")
    # llhttp's and aiohttp's own reasons lead the message; what follows them quotes the request.
    reason = exc.message.split(":\n", 1)[0]
    if reason == "Too many headers received":
        return HeadersTooLarge(f"The request has more than {handler.max_headers} headers.")
    if "Content-Length" in reason and "Transfer-Encoding" in reason:
        return InvalidRequest("A request may not carry both Content-Length and Transfer-Encoding.")
    if reason == "Content-Length overflow":
        return RequestTooLarge("The request's Content-Length is larger than any body this gateway accepts.")
    if "Content-Length" in reason:
        return InvalidRequest("The request's Content-Length header is not valid.")
    if "Transfer-Encoding" in reason:
        return InvalidRequest("The request's Transfer-Encoding is not valid: chunked must be its last coding.")
    if isinstance(exc, TransferEncodingError) or "chunk" in reason:
        return InvalidRequest("The request's chunked body is malformed.")
    if "'Host' header" in reason:
        return InvalidRequest("The request has no Host header, which HTTP/1.1 requires.")
    if reason.startswith("Duplicate"):
        return InvalidRequest("The request repeats a header that may appear only once.")
    if "header" in reason.lower():
        return InvalidRequest("A request header is malformed.")
    return InvalidRequest("The request is not valid HTTP/1.1.")


def _in_request_line(exc: LineTooLong, handler: RequestHandler) -> bool:
    """Whether the line that was too long is the request line (else a header): both limits are 8,190 bytes."""
    lines = getattr(handler._parser, "_lines", None)
    if isinstance(lines, list):  # aiohttp's pure-Python parser keeps the lines it has read
        return not lines
    tb = exc.__traceback__  # the compiled parser raises it from its URL callback
    while tb is not None:
        if tb.tb_frame.f_code.co_name.endswith("cb_on_url"):
            return True
        tb = tb.tb_next
    return False


def transfer_coding_refusal(headers: CIMultiDictProxy[str]) -> ApiError | None:
    """None for `Transfer-Encoding: chunked` alone; else its 501 (a coding we do not implement) or 400."""
    codings = [c.strip().lower() for value in headers.getall("Transfer-Encoding", ()) for c in value.split(",")]
    if codings == ["chunked"]:
        return None
    if not codings or codings[-1] != "chunked" or "chunked" in codings[:-1] or "" in codings:
        return InvalidRequest("The request's Transfer-Encoding is not valid: chunked must be its last coding, once.")
    return UnsupportedTransferCoding(
        "The request's Transfer-Encoding applies a coding this gateway does not implement; send the body "
        "with Transfer-Encoding: chunked alone (a compressed body goes in Content-Encoding)."
    )


def http_exception_refusal(exc: web.HTTPException) -> ApiError:
    """SPEC's error for an HTTP error aiohttp raised after parsing (its router's 404 and 405)."""
    status = exc.status
    if status == 404:
        return NotFound("No such endpoint.")
    if status == 405:
        return MethodNotAllowed("This method is not allowed here.", headers={"Allow": exc.headers.get("Allow", "")})
    if status == 413:
        return RequestTooLarge("Request body exceeds the configured limit.")
    error = (InvalidRequest if status < 500 else InternalError)(f"{exc.reason}.")
    error.status = status  # type: ignore[misc]
    return error


def _request_id(request: BaseRequest) -> str:
    """`request_id` for the requests aiohttp hands the protocol: the app's request factory makes web.Requests."""
    return request_id(cast(web.Request, request))


class ClientServer(web.Server):
    """aiohttp's low-level server, with the cap on connections and `ClientConnection`s to serve them."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.turned_away = 0  # connections answered 503 at the cap, since start
        self.turning_away: set[asyncio.Transport] = set()  # of those, the ones still read from
        self._unlogged = 0
        self._logged_at = -math.inf
        self._ticker: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def full(self) -> bool:
        return len(self._connections) >= self.limits.max_connections

    def watch(self) -> None:
        """Make sure the one timer that looks at every connection runs (a connection was just taken on)."""
        if self._ticker is None:
            self._ticker = self._loop.call_later(self.limits.look_every, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        for conn in list(self._connections):
            conn._look()  # type: ignore[attr-defined]  # every connection is ours: a ClientConnection or lean
        if self._connections:
            self.watch()

    def count_turned_away(self) -> None:
        """Count one more connection turned away; a warning line now and then, never one per connection."""
        self.turned_away += 1
        self._unlogged += 1
        now = self._loop.time()
        if now - self._logged_at >= CAP_LOG_EVERY:
            log.warning("client connection cap reached (%d open): %d new connection(s) answered 503 and closed; "
                        "raise [client] max_connections or the open-file limit if this is normal load",
                        self.limits.max_connections, self._unlogged)
            self._unlogged, self._logged_at = 0, now

    def pre_shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for transport in list(self.turning_away):
            transport.close()
        super().pre_shutdown()


class ClientConnection(RequestHandler):
    """aiohttp's connection protocol, answering in SPEC's JSON and holding clients to `ConnectionLimits`.

    `_at_boundary` says what arrived since the last answer or look: True when the parser is known
    to hold no part of a request, False when bytes came that may be part of an unfinished head,
    None when nothing came. `data_received` keeps it at the cost of one attribute store.
    """

    def __init__(self, manager: ClientServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._limits = manager.limits
        self._answered = 0  # requests handed to aiohttp whose answer is written
        self._at_boundary: bool | None = True
        self._lingered = False  # the last answer left a body to read: the next bytes may be its rest
        self._looked_count = 0  # heads parsed as of the last look
        self._head_since: float | None = None  # the look that first saw the current unfinished head
        self._body_mark: BodyMark | None = None  # a body's bytes as of a look, and when
        self._look_handle: asyncio.TimerHandle | None = None  # only to close a connection turned away
        self._turning_away: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        if data:
            self._at_boundary = False
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._server.full():
            self._turn_away(transport)  # type: ignore[arg-type]
            return
        super().connection_made(transport)
        self._server.watch()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._look_handle is not None:
            self._look_handle.cancel()
            self._look_handle = None
        if self._turning_away is not None:
            self._server.turning_away.discard(self._turning_away)
            self._turning_away = None
        super().connection_lost(exc)

    def _turn_away(self, transport: asyncio.Transport) -> None:
        """The 503 for a connection over the cap; then read and drop what the client sends until it closes."""
        self._force_close = True  # aiohttp parses nothing on this connection
        error = ServiceUnavailable("The gateway has as many connections open as it serves; retry in a moment.")
        error.headers.update(_CLOSE)
        transport.write(raw_response(error, pick_request_id(None)))
        server = self._server
        server.count_turned_away()
        if len(server.turning_away) >= TURN_AWAY_RESERVE or not transport.can_write_eof():
            transport.close()  # no room to wait for the client: the answer leaves before the close
            return
        transport.write_eof()
        server.turning_away.add(transport)
        self._turning_away = transport
        self._look_handle = self._loop.call_later(TURN_AWAY_LINGER, transport.close)

    def _look(self) -> None:
        """Every `look_every` seconds: a head begun a header timeout ago or a body silent a body timeout gets a 408."""
        if self._turning_away is not None or self._force_close or self.transport is None:
            return
        now = self._loop.time()
        limits = self._limits
        if self._request_count != self._looked_count:  # heads came whole since the last look
            self._looked_count = self._request_count
            self._head_since = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():  # between requests: whatever came is part of a head
            lingered, self._lingered = self._lingered, False
            if self._at_boundary is False:
                self._at_boundary = None
                if self._head_since is None and not lingered:  # (else it may be the rest of the last body)
                    self._head_since = now
            if self._head_since is not None and now - self._head_since >= limits.header_timeout - 0.001:
                self._time_out_head()
                return
        else:
            self._look_at_body(now)

    def _time_out_head(self) -> None:
        time_out_head(self.transport, self._limits, self._peer())
        self.force_close()

    def _look_at_body(self, now: float) -> None:
        """Fail the body's read with a 408 when no byte of it came for a body timeout (and we did not pause it)."""
        request = self._current_request
        if request is None:
            self._body_mark = None
            return
        payload = request.content
        if payload.is_eof() or payload.exception() is not None or self._reading_paused:
            self._body_mark = None
            return
        self._body_mark = mark_body(payload, self._body_mark, now, self._limits)
        if self._body_mark is None:
            log.info("request body timed out from %s: 408 (request_id=%s)", self._peer(), _request_id(request))

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]],
    ) -> tuple[StreamResponse, bool]:
        """aiohttp 3.14's own, with SPEC's JSON where it answers in text, the 501, and the look's bookkeeping.

        A copy rather than a wrapper: a wrapper is one more coroutine per request, and aiohttp
        catches the HTTPExceptions inside (the pin on aiohttp < 3.15 in pyproject.toml covers it).
        """
        self._request_in_progress = True
        try:
            try:
                self._current_request = request
                refusal = transfer_coding_refusal(request.headers) if request._message.chunked else None
                if refusal is None:
                    resp = await request_handler(request)
                else:
                    resp = self._refusal_answer(request, refusal)
            finally:
                self._current_request = None
        except web.HTTPException as exc:
            resp = exc if exc.status < 400 else self._refusal_answer(request, http_exception_refusal(exc), close=False)
            resp, reset = await self.finish_response(request, resp, start_time)
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            resp = self.handle_error(request, 504, exc)
            resp, reset = await self.finish_response(request, resp, start_time)
        except Exception as exc:
            resp = self.handle_error(request, 500, exc)
            resp, reset = await self.finish_response(request, resp, start_time)
        else:
            resp, reset = await self.finish_response(request, resp, start_time)
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
            self._answered += 1  # the answer is written (or the request failed)
            if self._at_boundary is False:
                self._at_boundary = None  # what came during the call was its body, not a head
            payload = request.content
            if not payload.is_eof():
                if payload.exception() is not None:
                    self.force_close()  # the body failed (stalled, undecodable): nothing more can follow it
                else:
                    self._lingered = True  # aiohttp reads the body's rest now
        return resp, reset

    def _refusal_answer(self, request: BaseRequest, error: ApiError, close: bool = True) -> StreamResponse:
        """The answer to a request refused after it was parsed, with the client's X-Request-Id, and its log line."""
        rid = _request_id(request)
        log.info("refused a request from %s: %d, %s (request_id=%s)", request.remote, error.status, error.message, rid)
        response = error.to_response({"X-Request-Id": rid, **(_CLOSE if close else {})})
        if close:
            response.force_close()
        return response

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        """SPEC's JSON for what the parser refused (in our words) and for a handler's failure; always closes."""
        if request.writer.output_size > 0:  # as aiohttp's: some of an answer left, no other can follow
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        rid = pick_request_id(None)  # the parser's refusals carry no headers: the client's id is unread
        if isinstance(exc, HttpProcessingError):
            error = parser_refusal(exc, self)
            log.info("refused malformed HTTP from %s: %d, %s (request_id=%s)",
                     request.remote, error.status, error.message, rid)
        else:
            error = InternalError("The gateway failed to handle this request.")
            log.error("unhandled error, request_id=%s", rid, exc_info=exc)
        response = error.to_response({"X-Request-Id": rid, **_CLOSE})
        response.force_close()
        return response
