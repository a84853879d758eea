"""Provider calls: a connection pool per provider origin, retries and fallback.

Before the first byte of an answer a failed or overloaded deployment is retried, with
backoff, on the model's next deployment and then on the configured fallback model, at most
`upstream_max_attempts` times per call. An answer starts with its first answer event, not with
its status line: a 200 whose stream drops, stays empty, holds no SSE data event, opens with an
error event or with `[DONE]` (or, for a JSON answer, a body that is empty or not a JSON object)
is a failed attempt like a 5xx, so the client never gets a 200 (and its metering headers) for
an answer that never came. What `send` read to decide that is handed to the relay with the
reply, already parsed, so no byte is parsed twice. What a failed attempt means for the caller
(`classify`, `final_error`, the `Scrubber`) is decided apart, on the error paths only.

Each provider's credential comes from `Settings.credentials`, resolved when the settings were
loaded; the pool puts it in the prebuilt request head and gives it to the `Scrubber`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from clexproxy.catalog import Catalog, Deployment, Model, Provider
from clexproxy.config import Credential, UpstreamSettings
from clexproxy.errors import ApiError, InternalError, InvalidRequest, ServiceUnavailable
from clexproxy.fastpath.sse import SSEEvent, SSEParser
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.wire import WIRES
from clexproxy.upstream.failures import OVERLOADED, Failure, Scrubber, classify, error_status, error_text, final_error
from clexproxy.upstream.http1 import Origin, UpstreamResponse

log = logging.getLogger("clexproxy.upstream.pool")

# Bytes a stream may send before its first data event (comments, say) before it counts as not SSE at all.
MAX_PREAMBLE = 1024 * 1024
DONE = b"[DONE]"
ERROR_KEY = b'"error"'  # a JSON key is never escaped: a cheap test before any parse


@dataclass(slots=True)
class UpstreamReply:
    """A deployment's answer, with what `send` read of it to know it is one.

    `received` is the whole body of a JSON answer (`doc`, its parse), or a stream's first bytes up to
    and including the chunk that holds its first answer event (`events`, as `parser` split them;
    the relay goes on with the same parser).
    """

    response: UpstreamResponse
    model: Model
    deployment: Deployment
    provider: Provider
    fallback: bool
    scrubber: Scrubber
    received: bytes = b""
    doc: Any = None
    events: list[SSEEvent] | None = None
    parser: SSEParser | None = None

    def midstream_error(self, error: Any) -> ApiError:
        """The SPEC error that takes the place of an error event the upstream sent inside an answer."""
        text = error_text(error)
        if text:
            text = self.scrubber(text, self.deployment.model, self.model.id)
        detail = f": {text}" if text else "."
        message = f"The provider for model '{self.model.id}' failed mid-stream{detail}"
        if error_status(error) in OVERLOADED:
            return ServiceUnavailable(message, error_type="upstream_error")
        return InternalError(message, error_type="upstream_error")


class _NoAnswer(Exception):
    """A 200 that holds no answer; `kind` is the metrics' failure kind, `reason` is for the log (no provider text)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _error_of(data: bytes) -> Any:
    """The `error` of an SSE data event that is an error event, else None (parses only when `"error"` occurs)."""
    if data.find(ERROR_KEY) < 0:  # not `in`, which tries its operand as an int first: a raised, cleared error
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc.get("error") if isinstance(doc, dict) else None


async def _read_to_first_event(
    response: UpstreamResponse, parser: SSEParser, chunk: bytes, events: list[SSEEvent]
) -> tuple[bytes, list[SSEEvent]]:
    """Go on reading a stream whose first read (`chunk`, parsed into `events`) did not start with a data event.

    Returns all the bytes read and their events once a data event is in; raises `_NoAnswer` when
    that is not an answer event, or when the body ends first.
    """
    for event in events:
        if event.data is not None:
            _check_first(event.data)
            return chunk, events
    chunks, seen, size = [chunk], events, len(chunk)
    while chunk:
        if size > MAX_PREAMBLE:
            raise _NoAnswer("bad_answer", f"no SSE data event in its first {size} bytes")
        chunk = await response.readany()
        events = parser.feed(chunk)
        chunks.append(chunk)
        seen += events
        size += len(chunk)
        for event in events:
            if event.data is not None:
                _check_first(event.data)
                return b"".join(chunks), seen
    raise _NoAnswer("bad_answer", "an empty stream" if size == 0 else "a body with no SSE data event")


def _check_first(data: bytes) -> None:
    if data == DONE:
        raise _NoAnswer("bad_answer", "a stream with no event before [DONE]")
    if _error_of(data) is not None:
        raise _NoAnswer("bad_answer", "a stream that opened with an error event")


def _passed(client_headers: Mapping[str, str], prefixes: tuple[str, ...]) -> bytes:
    """The client's headers a provider takes through (the demo upstream's `x-demo-*` knobs), as header lines."""
    out = b""
    for name, value in client_headers.items():
        lname = name.lower()
        if lname.startswith(prefixes) and "\r" not in value and "\n" not in value:
            out += f"{lname}: {value}\r\n".encode("utf-8", "surrogateescape")
    return out


class UpstreamPool:
    """Owns the provider connections; closed in the app's cleanup."""

    def __init__(self, settings: UpstreamSettings, catalog: Catalog, credentials: Mapping[str, Credential]) -> None:
        self._settings = settings
        self._catalog = catalog
        self._origins: dict[str, Origin] = {}
        self._heads: dict[tuple[str, str], tuple[Origin, bytes]] = {}
        self._plans: dict[str, list[tuple[Model, Deployment, bool]]] = {}
        self._credentials = {name: credential.value for name, credential in credentials.items()
                             if name in catalog.providers}
        self._scrub = Scrubber(
            (credential.value for credential in credentials.values()),
            (URL(p.base_url).host or "" for p in catalog.providers.values()),
        )

    def _target(self, provider: Provider, path: str) -> tuple[Origin, bytes]:
        """The origin to POST to and the prebuilt request head (line, Host, fixed headers, credential)."""
        target = self._heads.get((provider.name, path))
        if target is None:
            url = URL(provider.base_url + path, encoded="%" in path)
            origin_key = str(url.origin())
            origin = self._origins.get(origin_key)
            if origin is None:
                s = self._settings
                origin = self._origins[origin_key] = Origin(
                    url.origin(), limit=s.max_connections, keepalive_timeout=s.keepalive_timeout,
                    connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                )
            fixed = {"Content-Type": "application/json", "Accept": "*/*", "Accept-Encoding": "identity"}
            credential = self._credentials.get(provider.name)
            if credential:
                wire = WIRES.get(provider.format)
                fixed.update(wire.auth_headers(credential) if wire else {"Authorization": f"Bearer {credential}"})
            target = self._heads[(provider.name, path)] = (origin, origin.request_head(url.raw_path_qs, fixed))
        return target

    async def close(self) -> None:
        origins, self._origins, self._heads = self._origins, {}, {}
        for origin in origins.values():
            await origin.close()

    def _candidates(self, model: Model) -> list[tuple[Model, Deployment, bool]]:
        """Where to try a model, in order (computed once per model: the catalog is immutable)."""
        out = self._plans.get(model.id)
        if out is None:
            out = self._plans[model.id] = self._plan(model)
        return out

    def _plan(self, model: Model) -> list[tuple[Model, Deployment, bool]]:
        """Each deployment `1 + upstream_retries` times, then the fallback's: `upstream_max_attempts` at most.

        When the cap cuts the list, the fallback model keeps one attempt (if the cap is at least 2):
        retrying a failing deployment again is worth less than asking another model.
        """
        settings = self._settings
        out = [(model, d, False) for d in model.deployments] * (1 + settings.retries)
        fallback_id = self._catalog.fallback_model
        fallback = self._catalog.models.get(fallback_id) if fallback_id else None
        backup: list[tuple[Model, Deployment, bool]] = []
        if fallback is not None and fallback.id != model.id and fallback.kind == model.kind:
            backup = [(fallback, d, True) for d in fallback.deployments]
        cap = settings.max_attempts
        if backup and cap > 1:
            out = out[: cap - 1]
        out += backup
        return out[:cap]

    async def send(
        self,
        model: Model,
        endpoint: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        call: CallOutcome,
    ) -> UpstreamReply:
        """POST to the first deployment that answers 200; raise the mapped ApiError when none does."""
        payload_key, payload = "", b""  # the last attempt's: a retry on the same model sends the same bytes
        failure: Failure | None = None
        not_found_only = True
        for attempt, (target, deployment, is_fallback) in enumerate(self._candidates(model)):
            if is_fallback and failure is not None and failure.kind == "not_found" and not_found_only:
                break  # the upstream says the model does not exist: a fallback would answer a different question
            if is_fallback and endpoint == "/completions" and not target.completions:
                break  # a fallback that does not serve legacy completions cannot answer one
            provider = self._catalog.providers[deployment.provider]
            if attempt:
                await asyncio.sleep(min(1.0, self._settings.retry_backoff * (2 ** (attempt - 1))))
            wire = WIRES.get(provider.format)  # None: OpenAI's format, the body as it is
            key = deployment.model if wire is None else f"{provider.format}:{deployment.model}"
            if key != payload_key:
                if wire is None:
                    body["model"] = deployment.model
                    payload = orjson.dumps(body)
                else:
                    payload = wire.payload(body, deployment.model)
                # A copy its own length (formatting sizes it exactly): orjson's buffer is 4 KiB, and a waiting
                # call holds its payload.
                payload_key, payload = key, b"%b" % (payload,)
            path = endpoint if wire is None else wire.path(endpoint, deployment.model, call.stream)
            origin, head = self._target(provider, path)
            tail = b"X-Request-Id: %s\r\n" % call.request_id.encode()
            if provider.pass_headers:
                tail += _passed(client_headers, provider.pass_headers)
            call.retries = attempt
            sent = time.monotonic()
            try:
                response = await origin.post(head, tail, payload)
            except (TimeoutError, aiohttp.ClientError, HttpProcessingError, OSError) as exc:
                reason = getattr(getattr(exc, "os_error", exc), "strerror", None) or type(exc).__name__
                log.warning("upstream %s unreachable for %s: %s", provider.name, deployment.model, reason)
                kind = "timeout" if isinstance(exc, TimeoutError) else "connect"
                call.upstream_failed(provider.name, kind)
                failure, not_found_only = Failure("unreachable", 0), False
                continue
            call.upstream_answered(provider.name, time.monotonic() - sent)
            if response.status == 200:
                doc: Any = None
                events: list[SSEEvent] | None = None
                parser: SSEParser | None = None
                try:
                    if call.stream:  # read up to the first data event; usually the first read starts with it
                        parser = SSEParser()
                        received = await response.readany()
                        events = parser.feed(received)
                        if events and events[0].data is not None:
                            _check_first(events[0].data)
                        else:
                            received, events = await _read_to_first_event(response, parser, received, events)
                        if wire is not None:  # a refusal to answer (a safety block) raises an ApiError: no retry
                            wire.check_first(next(e.data for e in events if e.data is not None))
                    else:  # read here, inline: this is every JSON call's path
                        received = await response.read()
                        doc = orjson.loads(received)
                        if type(doc) is not dict or doc.get("error") is not None:
                            raise _NoAnswer("bad_answer", "a JSON body that is not an answer")
                        response.release()
                        if wire is not None:  # the provider's answer as a chat completion (or its refusal, raised)
                            doc = wire.answer(doc, target.id)
                            received = orjson.dumps(doc)
                except (_NoAnswer, orjson.JSONDecodeError, TimeoutError, aiohttp.ClientPayloadError,
                        aiohttp.ClientConnectionError) as exc:
                    response.close()
                    if isinstance(exc, _NoAnswer):
                        kind, reason = exc.kind, exc.reason
                    elif isinstance(exc, orjson.JSONDecodeError):
                        kind, reason = "bad_answer", "a body that is not JSON" if received else "an empty body"
                    else:
                        kind = "timeout" if isinstance(exc, TimeoutError) else "midstream_drop"
                        reason = f"the connection was lost before the answer ({type(exc).__name__})"
                    log.warning("upstream %s answered 200 for %s with no answer: %s", provider.name,
                                deployment.model, reason)
                    call.upstream_failed(provider.name, kind)
                    failure, not_found_only = Failure("unreachable", 0), False
                    continue
                except BaseException:
                    response.close()
                    raise
                call.provider, call.served_model, call.fallback = provider.name, target.id, is_fallback
                return UpstreamReply(response, target, deployment, provider, is_fallback, self._scrub, received, doc,
                                     events, parser)
            call.upstream_failed(provider.name, f"{response.status // 100}xx")
            failure = await classify(response, provider, deployment, target, self._scrub)
            not_found_only = not_found_only and failure.kind == "not_found"
            if failure.kind == "invalid":
                detail = f": {failure.message}" if failure.message else "."
                raise InvalidRequest(f"The provider rejected the request{detail}", error_type="upstream_error")
        raise final_error(model, failure)
