"""The one path every proxied call takes: authenticate, parse, route, admit, relay, settle.

Settlement runs in `finally` and is synchronous, so a client that leaves (which cancels this
handler, and with it the upstream request) cannot interrupt it: a call whose answer had not
started is refunded, one whose answer started is charged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from clexproxy import relay
from clexproxy.catalog import Model
from clexproxy.errors import ApiError, InvalidRequest, ModelNotFound
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import GATEWAY, read_json, request_id
from clexproxy.metering import Admission
from clexproxy.relay import CallOutcome
from clexproxy.validation import default_stream, validate_chat, validate_embeddings

access_log = logging.getLogger("clexproxy.access")


def _route(gateway_models: Any, model_id: str, kind: str) -> Model:
    model: Model | None = gateway_models.get(model_id)
    if model is None:
        raise ModelNotFound(
            f"Model '{model_id}' is not available. Check /v1/models for supported models.",
            extra={"param": "model"},
        )
    if model.kind != kind:
        endpoint = "/v1/embeddings" if model.kind == "embedding" else "/v1/chat/completions"
        raise InvalidRequest(
            f"Model '{model_id}' is an {model.kind} model; call it through {endpoint}.", extra={"param": "model"}
        )
    return model


async def handle(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Serve one chat-completions (`endpoint` "/chat/completions") or embeddings ("/embeddings") call."""
    started = time.monotonic()
    gateway = request.app[GATEWAY]
    rid = request_id(request)
    try:
        key, account = gateway.directory.authenticate(request.headers.get("Authorization"))
    except ApiError as error:
        _log_rejection(gateway, rid, endpoint, error, None, None, "-")
        return error.to_response({"X-Request-Id": rid})

    wants_usage = False
    stream = False
    model_id = "-"
    try:
        body = await read_json(request, gateway.settings.max_body_bytes)
        if endpoint == "/chat/completions":
            model_id, stream, wants_usage = validate_chat(body, default_stream(request.headers.get("Accept")))
            model = _route(gateway.catalog.models, model_id, "chat")
        else:
            model_id = validate_embeddings(body)
            model = _route(gateway.catalog.models, model_id, "embedding")
        admission = gateway.meter.admit(account, gateway.catalog.cost(model.id))
    except ApiError as error:
        headers = error.headers if "X-Clex-Credits-Limit" in error.headers else gateway.meter.peek_headers(account)
        _log_rejection(gateway, rid, endpoint, error, account.id, key.key_id, model_id)
        return error.to_response({**headers, "X-Request-Id": rid})

    headers = admission.headers
    headers["X-Request-Id"] = rid
    outcome = CallOutcome()

    def settle_error(error: ApiError) -> dict[str, str]:
        if not outcome.answer_started:
            gateway.meter.refund(admission)
        return {**headers, **error.headers}

    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {**options, "include_usage": True} if options else {"include_usage": True}
    send = gateway.upstream.send(model, endpoint, body, request.headers, rid)
    try:
        if stream:
            return await relay.stream(
                request, send, headers, wants_usage, gateway.settings.sse_keepalive_seconds, outcome, settle_error
            )
        try:
            raw = await relay.unary(send, outcome)
        except ApiError as error:
            outcome.status, outcome.error_code = error.status, error.code
            return error.to_response(settle_error(error))
        outcome.answer_started = True
        overhead = time.monotonic() - started - outcome.upstream_seconds
        headers["X-Clex-Overhead-Ms"] = f"{overhead * 1000:.3f}"
        return web.Response(body=raw, content_type="application/json", headers=headers)
    except BaseException:
        outcome.status = outcome.status if outcome.status != 200 else 499
        raise
    finally:
        _settle(gateway, admission, outcome, endpoint, model, stream, started, rid, key.key_id, account.id)


def _settle(
    gateway: Gateway,
    admission: Admission,
    outcome: CallOutcome,
    endpoint: str,
    model: Model,
    stream: bool,
    started: float,
    rid: str,
    key_id: int,
    account_id: int,
) -> None:
    if not outcome.answer_started:
        gateway.meter.refund(admission)
    if outcome.prompt_tokens or outcome.completion_tokens:
        gateway.meter.record_tokens(admission, outcome.prompt_tokens, outcome.completion_tokens)
    total = time.monotonic() - started
    overhead = max(0.0, total - outcome.upstream_seconds)
    metrics = gateway.metrics
    metrics.requests.labels(endpoint, model.id, f"{outcome.status // 100}xx").inc()
    metrics.overhead.labels(endpoint, "true" if stream else "false").observe(overhead)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request_id=%s account=%d key=%d endpoint=%s model=%s provider=%s status=%d credits=%d "
            "prompt_tokens=%d completion_tokens=%d overhead_ms=%.3f upstream_ms=%.3f",
            rid, account_id, key_id, endpoint, model.id, outcome.provider or "-", outcome.status,
            0 if admission.refunded else admission.cost, outcome.prompt_tokens, outcome.completion_tokens,
            overhead * 1000, outcome.upstream_seconds * 1000,
        )


def _log_rejection(
    gateway: Gateway,
    rid: str,
    endpoint: str,
    error: ApiError,
    account_id: int | None,
    key_id: int | None,
    model_id: str,
) -> None:
    """One access-log line and one count for a call refused before it reached an upstream."""
    known = model_id if model_id in gateway.catalog.models else "-"  # bounded label set: catalog ids only
    gateway.metrics.requests.labels(endpoint, known, f"{error.status // 100}xx").inc()
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request_id=%s account=%s key=%s endpoint=%s model=%s status=%d code=%s credits=0",
            rid, "-" if account_id is None else account_id, "-" if key_id is None else key_id, endpoint,
            known, error.status, getattr(error, "limit", error.code),
        )


def make_handler(endpoint: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await handle(request, endpoint)

    handler.__name__ = "handle_" + endpoint.strip("/").replace("/", "_")
    return handler
