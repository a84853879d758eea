"""The one path every proxied call takes: authenticate, parse, route, admit, relay, settle.

Settlement runs in `finally` and is synchronous, so a client that leaves (which cancels this
handler, and with it the upstream request) cannot interrupt it: a call whose answer had not
started is refunded, one whose answer started is charged. The call's `CallOutcome` then feeds
the metrics and the access log in one pass.

A call answered by the fallback model is charged that model's credits (`Meter.charge_served`)
once the upstream has answered and before the answer's headers leave, which say so
(`X-Clex-Served-Model`, and the credits remaining after the new charge). Every answer after
authentication carries the metering headers, a 500 from a bug in this path included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from clexproxy import relay
from clexproxy.catalog import Model, Plan
from clexproxy.config import Settings
from clexproxy.errors import (
    SHUTDOWN,
    ApiError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    cut_by_shutdown,
    shutdown_error,
)
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import (
    GATEWAY,
    REQUEST_ID,
    body_unreadable,
    pick_request_id,
    read_json,
    request_id,
)
from clexproxy.handlers.validation import (
    check_chat,
    default_stream,
    sampling_defaults,
    user_agent_prefixes,
    validate_embeddings,
)
from clexproxy.limits.local import Admission
from clexproxy.observability.accesslog import text_value
from clexproxy.outcome import CallOutcome

log = logging.getLogger("clexproxy.proxy")

# The proxied paths, as clients send them, and the endpoint each serves: the router and the
# screen (clexproxy/server/screen.py) both read this one table.
PROXIED_PATHS = {
    "/v1/chat/completions": "/chat/completions",
    "/api/chat": "/chat/completions",
    "/v1/embeddings": "/embeddings",
}
_KINDS = {"chat": "a chat model", "embedding": "an embedding model"}
_NO_HEADERS: Mapping[str, str] = {}


def _route(models: Mapping[str, Model], model_id: str, kind: str) -> Model:
    model = models.get(model_id)
    if model is None:
        raise ModelNotFound(
            f"Model '{model_id}' is not available. Check /v1/models for supported models.",
            extra={"param": "model"},
        )
    if model.kind != kind:
        endpoint = "/v1/embeddings" if model.kind == "embedding" else "/v1/chat/completions"
        raise InvalidRequest(
            f"Model '{model_id}' is {_KINDS[model.kind]}; call it through {endpoint}.", extra={"param": "model"}
        )
    return model


def _refused(gateway: Gateway, call: CallOutcome, error: ApiError, headers: dict[str, str]) -> web.Response:
    call.status, call.error_code = error.status, error.code
    if isinstance(error, RateLimited):
        call.limit = error.limit
    settle_refusal(gateway, call)
    return error.to_response(headers)


def _stream_default(request: web.Request, plan: Plan, settings: Settings) -> bool:
    """SSE or JSON for a chat call that left `stream` out (`validation.default_stream`)."""
    headers = request.headers
    agents = user_agent_prefixes(settings.sse.json_user_agents)
    return default_stream(headers.get("Accept"), headers.get("User-Agent"), agents, plan.default_stream)


def _charge_served(gateway: Gateway, admission: Admission, call: CallOutcome) -> Mapping[str, str]:
    """Charge a fallback's answer at the model that answered; the headers that say so."""
    gateway.meter.charge_served(admission, gateway.catalog.cost(call.served_model))
    headers = admission.headers
    headers["X-Clex-Served-Model"] = call.served_model
    return {"X-Clex-Served-Model": call.served_model, "X-Clex-Credits-Remaining": headers["X-Clex-Credits-Remaining"]}


def _bug(call: CallOutcome) -> InternalError:
    log.exception("unhandled error, request_id=%s", text_value(call.request_id))
    return InternalError("The gateway failed to handle this request.")


def settle_refusal(gateway: Gateway, call: CallOutcome) -> None:
    """A call refused before it reached an upstream (`call` says how): nothing reserved, one metrics pass, one log line.

    Shared with the screen (clexproxy/server/screen.py), whose refusals must count exactly as these do.
    """
    call.finished_at = time.monotonic()
    gateway.metrics.call_finished(call)
    gateway.access_log.call(call)


async def handle(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Serve one chat-completions (`endpoint` "/chat/completions") or embeddings ("/embeddings") call."""
    gateway = request.app[GATEWAY]
    rid = request[REQUEST_ID] = pick_request_id(request.headers.get("X-Request-Id"))
    call = CallOutcome(endpoint, time.monotonic(), rid)
    gateway.metrics.call_started(endpoint)
    authorization = request.headers.get("Authorization")
    try:
        key, account = gateway.directory.authenticate(authorization)
    except ApiError as error:
        gateway.refusals.note(authorization, call.started)
        return _refused(gateway, call, error, {"X-Request-Id": call.request_id})
    call.account_id, call.key_id, call.plan = account.id, key.key_id, account.plan.name

    wants_usage = False
    try:
        bucket = gateway.meter.take_request(account)
        if bucket is None:  # a shared limit with no slot in hand: one trip to Redis
            bucket = await gateway.meter.take_request_remote(account)
        body = await read_json(request, gateway.settings.server.max_body_bytes)
        if endpoint == "/chat/completions":
            model_id, stream, wants_usage = check_chat(body)
            model = _route(gateway.catalog.models, model_id, "chat")
            if stream is None:
                stream = body["stream"] = _stream_default(request, account.plan, gateway.settings)
            if model.sampling_defaults:
                sampling_defaults(body)
            call.stream = stream
        else:
            model = _route(gateway.catalog.models, validate_embeddings(body), "embedding")
        call.model, call.tier = model.id, model.tier
        cost = gateway.catalog.cost(model.id)
        admission = gateway.meter.reserve(account, cost, bucket)
        if admission is None:  # a shared budget and a lease too short for this call: top it up from Redis
            admission = await gateway.meter.reserve_remote(account, cost, bucket)
    except ApiError as error:
        if isinstance(error, RateLimited) and error.limit == "requests_per_minute":
            gateway.refusals.note(authorization, call.started)
        headers = error.headers if "X-Clex-Credits-Limit" in error.headers else gateway.meter.peek_headers(account)
        response = _refused(gateway, call, error, {**headers, "X-Request-Id": call.request_id})
        if body_unreadable(request):
            response.force_close()  # the parser stopped mid-body: the connection cannot carry another request
        return response
    except Exception:  # a bug, not a refusal: SPEC's 500, with the headers of any authenticated answer
        headers = {**gateway.meter.peek_headers(account), "X-Request-Id": call.request_id}
        return _refused(gateway, call, _bug(call), headers)
    except BaseException:
        call.status, call.disconnected, call.finished_at = 499, True, time.monotonic()
        gateway.metrics.call_finished(call)
        gateway.access_log.call(call)
        raise

    headers = admission.headers
    headers["X-Request-Id"] = call.request_id

    def settle_error(error: ApiError) -> dict[str, str]:
        call.status, call.error_code = error.status, error.code
        if not call.answer_started:
            gateway.meter.refund(admission)
        return {**headers, **error.headers}

    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**options, "include_usage": True} if options else {"include_usage": True}
    send = gateway.upstream.send(model, endpoint, body, request.headers, call)
    del body  # the upstream call holds it until sent; a long stream should not keep it after
    try:
        if call.stream:

            def served() -> Mapping[str, str]:  # once the upstream answered, before the headers leave
                return _charge_served(gateway, admission, call) if call.fallback else _NO_HEADERS

            gateway.metrics.stream_opened()
            try:
                return await relay.stream(
                    request, send, headers, wants_usage, gateway.keepalives, call, settle_error, answer_headers=served
                )
            finally:
                gateway.metrics.stream_closed()
        try:
            raw = await relay.unary(send, call)
        except ApiError as error:
            return error.to_response(settle_error(error))
        if call.fallback:
            _charge_served(gateway, admission, call)
        call.answer_started = True
        overhead = time.monotonic() - call.started - call.upstream_seconds
        headers["X-Clex-Overhead-Ms"] = f"{overhead * 1000:.3f}"
        return web.Response(body=raw, content_type="application/json", headers=headers)
    except asyncio.CancelledError:
        if cut_by_shutdown(request) and not call.stream:  # the shutdown's grace ended before the answer
            cut = shutdown_error()
            response = cut.to_response(settle_error(cut))
            call.error_code = SHUTDOWN  # the access line: cut by the gateway, not left by the client
            return response
        call.disconnected = True
        raise
    except Exception:
        if call.answer_started or request.writer.output_size:  # bytes of an answer left: none other can follow
            call.status = 500 if call.status == 200 else call.status
            raise
        failure = _bug(call)
        return failure.to_response(settle_error(failure))
    except BaseException:
        call.status = 500 if call.status == 200 else call.status
        raise
    finally:
        _settle(gateway, admission, call)


def _settle(gateway: Gateway, admission: Admission, call: CallOutcome) -> None:
    if not call.answer_started:
        gateway.meter.refund(admission)
    if call.disconnected:
        call.status = 499  # nginx's "client closed request": the client never saw a status
    if admission.refunded:
        call.credits_refunded = admission.cost
    else:
        call.credits_charged = admission.cost
    if call.prompt_tokens or call.completion_tokens:
        gateway.meter.record_tokens(admission, call.prompt_tokens, call.completion_tokens)
    call.finished_at = time.monotonic()
    gateway.metrics.call_finished(call)
    gateway.access_log.call(call)


def _metering_headers(request: web.Request) -> Mapping[str, str]:
    """The metering headers for a 500 that escaped `handle`; none when the request's key is not good.

    The key is looked up again here, so the normal path keeps no account on the request.
    """
    try:
        gateway = request.app[GATEWAY]
        _, account = gateway.directory.authenticate(request.headers.get("Authorization"))
        return gateway.meter.peek_headers(account)
    except Exception:
        return _NO_HEADERS


def make_handler(endpoint: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await handle(request, endpoint)
        except Exception:  # a bug, not a refusal: SPEC's 500, never a trace
            log.exception("unhandled error, request_id=%s", text_value(request_id(request)))
            error = InternalError("The gateway failed to handle this request.")
            return error.to_response({**_metering_headers(request), "X-Request-Id": request_id(request)})

    handler.__name__ = "handle_" + endpoint.strip("/").replace("/", "_")
    return handler
