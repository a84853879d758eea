"""The one path every proxied call takes: authenticate, parse, route, admit, relay, settle.

Admission is two steps on the gateway's `Limits`, whichever implementation it is:
`count_request` before the body is read, `admit` once the model (and so the cost) is known.
Settlement (`finish_call`) runs in `finally` and is synchronous, so a client that leaves (which
cancels this handler, and with it the upstream request) cannot interrupt it: a call whose answer
had not started is refunded, one whose answer started is charged. The call's `CallOutcome` then
feeds the metrics and the access log in one pass.

A call answered by the fallback model is charged that model's credits (`Limits.charge_served`)
once the upstream has answered and before the answer's headers leave, which say so
(`X-Clex-Served-Model`, and the credits remaining after the new charge). Every answer after
authentication carries the metering headers, a 500 from a bug in this path included.

A request with an Origin gets the CORS headers (`CorsPolicy.answer`) on every answer, a refusal
or a 500 included, so a page on another origin can read the status and the metering headers; one
without pays one header lookup for that.

A key its creator limited (`KeyPolicy`: expiry, daily cap, model allow-list) is checked after
authentication: expired, SPEC's 401 before the call counts; a model outside its allow-list, a 403
once the model is known, charging nothing; its daily cap is a second budget `admit` reserves from
with the account's. A key without limits costs one dict miss.

`/api/chat` without an Authorization header may be the console's signed-in API Explorer: the
session cookie (`api_session`: same origin, CSRF header) stands in for a key, the call is charged
to the user's account under key id 0, and its answers carry no CORS headers. That branch runs
only where the key path has already failed for want of a header (in its `except`), so a key's call
pays nothing for it. A call without the header is never noted for the screen (`RecentRefusals`): the screen would
otherwise refuse the next signed-in call, which carries no header either.

Every ingress takes this path (`Ingress`: chat completions, embeddings, legacy completions, and
the Responses and Messages APIs translated onto chat completions). A translated call differs in
three places only: its body becomes a chat body (`Translation`), its answer goes back through the
translation (`relay.unary`'s `answer`, `relay.stream`'s `encoder`), and its errors are rendered in
its protocol's shape (`Ingress.render`). Credits, limits, settlement and the metering headers are
the same code for all, so every ingress is charged and counted alike.

The call is a `ProxiedRequest`, served in its connection's own loop (`ProxyConnection`), never a
`web.Request`: `handle` returns the answer for the connection to write, a whole JSON answer as
bytes (`ProxiedRequest.json_answer`), a stream it has written (`SSEAnswer`), or an error's
`web.Response` as the ingress renders it.

The handler reads no settings: `ProxiedEndpoint` gives it the body limit, the User-Agent prefixes
that get JSON by default, parsed once, and the CORS policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import hdrs, web

from clexproxy import relay
from clexproxy.auth import CONSOLE_KEY_ID, Account
from clexproxy.catalog import Model, Plan
from clexproxy.cors import CorsPolicy
from clexproxy.errors import (
    SHUTDOWN,
    ApiError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
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
from clexproxy.handlers.ingress import CHAT, EMBEDDINGS, ErrorRenderer, Ingress
from clexproxy.handlers.settle import finish_call
from clexproxy.handlers.validation import (
    check_chat,
    check_completions,
    default_stream,
    sampling_defaults,
    user_agent_prefixes,
    validate_embeddings,
)
from clexproxy.headers import CREDITS_LIMIT, CREDITS_REMAINING, OVERHEAD_MS, SERVED_MODEL
from clexproxy.headers import REQUEST_ID as X_REQUEST_ID
from clexproxy.limits.base import Admission
from clexproxy.observability.accesslog import text_value
from clexproxy.outcome import CallOutcome
from clexproxy.protocols.chunks import Translation
from clexproxy.proxied_request import Answer, ProxiedRequest
from clexproxy.web.session import api_session

log = logging.getLogger("clexproxy.proxy")

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


def _refused(gateway: Gateway, call: CallOutcome, error: ApiError, headers: dict[str, str],
             render: ErrorRenderer) -> web.Response:
    call.status, call.error_code = error.status, error.code
    if isinstance(error, RateLimited):
        call.limit = error.limit
    finish_call(gateway, call)
    return render(error, headers)


def _stream_default(request: ProxiedRequest, plan: Plan, json_agents: tuple[str, ...]) -> bool:
    """SSE or JSON for a chat call that left `stream` out (`default_stream`)."""
    headers = request.headers
    return default_stream(headers.get("Accept"), headers.get("User-Agent"), json_agents, plan.default_stream)


def _charge_served(gateway: Gateway, admission: Admission, call: CallOutcome) -> Mapping[str, str]:
    """Charge a fallback's answer at the model that answered; the headers that say so."""
    admission.model = call.served_model  # the usage by model counts the model that answered
    gateway.limits.charge_served(admission, gateway.catalog.cost(call.served_model))
    headers = admission.headers
    headers[SERVED_MODEL] = call.served_model
    return {SERVED_MODEL: call.served_model, CREDITS_REMAINING: headers[CREDITS_REMAINING]}


def _bug(call: CallOutcome) -> InternalError:
    log.exception("unhandled error, request_id=%s", text_value(call.request_id))
    return InternalError("The gateway failed to handle this request.")


async def _console_account(request: ProxiedRequest, gateway: Gateway) -> Account | None:
    """The account of a signed-in console user calling without a key; None without a session."""
    user = await api_session(await request.web_request())
    if user is None:
        return None
    if user.account_id is None:
        raise PermissionDenied("Operators have no account to charge: sign in as a user of an account, "
                               "or call with a key.", reason="role")
    account = gateway.directory.accounts.get(user.account_id)
    if account is None:
        raise PermissionDenied("This user's account is not known to the gateway yet: retry shortly.", reason="role")
    return account


async def handle(
    request: ProxiedRequest, ingress: Ingress, max_body_bytes: int, json_agents: tuple[str, ...], cors: CorsPolicy
) -> Answer:
    """Serve one call of `ingress` (chat completions, embeddings, legacy completions, Responses, Messages)."""
    gateway = request.app[GATEWAY]
    rid = request[REQUEST_ID] = pick_request_id(request.headers.get(X_REQUEST_ID))
    endpoint, render = ingress.endpoint, ingress.render
    call = CallOutcome(endpoint, time.monotonic(), rid, api=ingress.api)
    gateway.metrics.call_started(endpoint)
    origin = request.headers.get(hdrs.ORIGIN)  # an `istr`: the lookup skips folding the name's case
    cors_headers = _NO_HEADERS if origin is None else cors.answer(origin)
    authorization = request.headers.get("Authorization")
    if authorization is None and ingress.key_header is not None:
        api_key = request.headers.get(ingress.key_header)
        if api_key is not None:
            authorization = "Bearer " + api_key
    limits = gateway.limits
    budget: Account | None = None
    try:
        key, account = gateway.directory.authenticate(authorization)
        key_id = key.key_id
        policy = gateway.directory.policies.get(key_id)
        if policy is not None:
            expired = policy.expired(limits.clock.time())
            if expired is not None:
                return _refused(gateway, call, expired, {X_REQUEST_ID: call.request_id, **cors_headers}, render)
            budget = policy.budget
    except ApiError as error:
        console = None
        if authorization is not None:
            gateway.refusals.note(authorization, call.started)
        elif request.path == "/api/chat":
            try:
                console = await _console_account(request, gateway)
            except ApiError as refusal:  # a refusal shares nothing: it keeps the CORS headers any 401 gets
                return _refused(gateway, call, refusal, {X_REQUEST_ID: call.request_id, **cors_headers}, render)
        if console is None:
            return _refused(gateway, call, error, {X_REQUEST_ID: call.request_id, **cors_headers}, render)
        account, key_id, policy, cors_headers = console, CONSOLE_KEY_ID, None, _NO_HEADERS
    call.account_id, call.key_id, call.plan = account.id, key_id, account.plan.name

    wants_usage = False
    translation: Translation | None = None
    try:
        bucket = await limits.count_request(account)
        body = await read_json(request, max_body_bytes)
        if ingress is CHAT:
            model_id, stream, wants_usage = check_chat(body)
            model = _route(gateway.catalog.models, model_id, "chat")
            if stream is None:
                stream = body["stream"] = _stream_default(request, account.plan, json_agents)
            if model.sampling_defaults:
                sampling_defaults(body)
            call.stream = stream
        elif ingress is EMBEDDINGS:
            model = _route(gateway.catalog.models, validate_embeddings(body), "embedding")
        else:
            model, body, translation, wants_usage = _parse(request, ingress, body, gateway, account, json_agents)
            call.stream = body["stream"]
        call.model, call.tier = model.id, model.tier
        if policy is not None and policy.models is not None and model.id not in policy.models:
            raise PermissionDenied(
                f"This API key may not call '{model.id}': its model allow-list is "
                f"{', '.join(sorted(policy.models)) or 'empty'}.",
                reason="model_not_allowed",
                extra={"param": "model"},
            )
        admission = await limits.admit(account, gateway.catalog.cost(model.id), bucket, key_id, model.id, budget)
    except ApiError as error:
        if isinstance(error, RateLimited) and error.limit == "requests_per_minute" and authorization is not None:
            gateway.refusals.note(authorization, call.started)
        headers = error.headers if CREDITS_LIMIT in error.headers else limits.peek_headers(account, budget)
        response = _refused(gateway, call, error, {**headers, X_REQUEST_ID: call.request_id, **cors_headers}, render)
        if body_unreadable(request):
            response.force_close()  # the parser stopped mid-body: the connection cannot carry another request
        return response
    except Exception:  # a bug, not a refusal: SPEC's 500, with the headers of any authenticated answer
        headers = {**limits.peek_headers(account, budget), X_REQUEST_ID: call.request_id, **cors_headers}
        return _refused(gateway, call, _bug(call), headers, render)
    except BaseException:
        call.disconnected = True  # the client left (or the worker is stopping) before an upstream was asked
        finish_call(gateway, call)
        raise

    headers = admission.headers
    headers[X_REQUEST_ID] = call.request_id
    if cors_headers:
        headers.update(cors_headers)

    settle = _Settle(gateway, call, admission, headers, request)
    settle_error = settle.error
    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**options, "include_usage": True} if options else {"include_usage": True}
    send = gateway.upstream.send(model, endpoint, body, request.headers, call)
    del body  # the upstream call holds it until sent; a long stream should not keep it after
    try:
        if call.stream:
            relaying = relay.stream(
                request, request.sse_answer({**headers, **relay.SSE_HEADERS}), send, wants_usage,
                gateway.keepalives, call, settle_error, answer_headers=settle.served,
                encoder=None if translation is None else translation.encoder(), render=render,
            )
            del send  # the relay drops the upstream call once it has answered: a stream may last minutes
            gateway.metrics.stream_opened()
            try:
                return await relaying
            finally:
                gateway.metrics.stream_closed()
        try:
            raw = await relay.unary(send, call, None if translation is None else translation.answer)
        except ApiError as error:
            return render(error, settle_error(error))
        if call.fallback:
            _charge_served(gateway, admission, call)
        call.answer_started = True
        overhead = time.monotonic() - call.started - call.upstream_seconds
        headers[OVERHEAD_MS] = f"{overhead * 1000:.3f}"
        return request.json_answer(raw, headers)
    except asyncio.CancelledError:
        if cut_by_shutdown(request) and not call.stream:  # the shutdown's grace ended before the answer
            cut = shutdown_error()
            response = render(cut, settle_error(cut))
            call.error_code = SHUTDOWN  # the access line: cut by the gateway, not left by the client
            return response
        call.disconnected = True
        raise
    except Exception:
        if call.answer_started or request.output_size:  # bytes of an answer left: none other can follow
            call.status = 500 if call.status == 200 else call.status
            raise
        failure = _bug(call)
        return render(failure, settle_error(failure))
    except BaseException:
        call.status = 500 if call.status == 200 else call.status
        raise
    finally:
        finish_call(gateway, call, admission)


class _Settle:
    """An admitted call's two callbacks for the relay: its error's headers (and refund), and its answer's.

    An object rather than two closures: a closure per call keeps a cell for each name it reads
    for as long as the call runs, and a stream may run for minutes.
    """

    __slots__ = ("admission", "call", "gateway", "headers", "request")

    def __init__(self, gateway: Gateway, call: CallOutcome, admission: Admission, headers: dict[str, str],
                 request: ProxiedRequest) -> None:
        self.gateway = gateway
        self.call = call
        self.admission = admission
        self.headers = headers
        self.request = request

    def error(self, error: ApiError) -> dict[str, str]:
        """The headers of the call's error answer; the reservation is refunded while no answer started."""
        call = self.call
        call.status, call.error_code = error.status, error.code
        if not call.answer_started:
            self.gateway.limits.refund(self.admission)
        return {**self.headers, **error.headers}

    def served(self) -> Mapping[str, str]:
        """Once the upstream answered, before the stream's headers leave."""
        self.request.forget_head()  # nothing reads it again, and a stream may last minutes
        call = self.call
        return _charge_served(self.gateway, self.admission, call) if call.fallback else _NO_HEADERS


def _parse(request: ProxiedRequest, ingress: Ingress, body: Any, gateway: Gateway, account: Account,
           json_agents: tuple[str, ...]) -> tuple[Model, dict[str, Any], Translation | None, bool]:
    """A legacy completions call or a translated one (Responses, Messages): its model, the body to send, the
    translation (None for legacy completions, sent as it is) and whether the client asked for the usage chunk."""
    translation: Translation | None = None
    if ingress.translate is None:  # legacy completions
        model_id, stream, wants_usage = check_completions(body)
        model = _route(gateway.catalog.models, model_id, "chat")
        if not model.completions:
            raise InvalidRequest(
                f"Model '{model.id}' is not served on /v1/completions: its provider serves it through chat "
                "completions only. Call /v1/chat/completions.", extra={"param": "model"})
        if stream is None:
            body["stream"] = _stream_default(request, account.plan, json_agents)
    else:
        translation = ingress.translate(body)
        model = _route(gateway.catalog.models, translation.model, "chat")
        body, wants_usage = translation.body, False
    if model.sampling_defaults:
        sampling_defaults(body)
    return model, body, translation, wants_usage


def _metering_headers(request: ProxiedRequest) -> Mapping[str, str]:
    """The metering headers for a 500 that escaped `handle`; none when the request's key is not good.

    The key is looked up again here, so the normal path keeps no account on the request.
    """
    try:
        gateway = request.app[GATEWAY]
        _, account = gateway.directory.authenticate(request.headers.get("Authorization"))
        return gateway.limits.peek_headers(account)
    except Exception:
        return _NO_HEADERS


class ProxiedEndpoint:
    """The calls of one ingress: `handle` with the endpoint's settings, and the last catch-all's 500 (`failed`).

    `json_user_agents` is the `sse_json_user_agents` setting: the User-Agent prefixes whose chat
    calls without `stream` get JSON (`default_stream`). `cors` says which origins' pages may read
    the answers.

    The connection awaits `handle`'s own coroutine (a waiting call holds one frame fewer than with a
    wrapper around it), and calls `failed` when something escaped it: a bug, never a refusal.
    """

    __slots__ = ("cors", "ingress", "json_agents", "max_body_bytes")

    def __init__(self, ingress: Ingress, max_body_bytes: int, json_user_agents: str, cors: CorsPolicy) -> None:
        self.ingress = ingress
        self.max_body_bytes = max_body_bytes
        self.json_agents = user_agent_prefixes(json_user_agents)
        self.cors = cors

    def __call__(self, request: ProxiedRequest) -> Coroutine[Any, Any, Answer]:
        return handle(request, self.ingress, self.max_body_bytes, self.json_agents, self.cors)

    def failed(self, request: ProxiedRequest) -> web.Response:
        """SPEC's 500 for what escaped `handle`, never a trace; called while the exception is handled (logged here)."""
        log.exception("unhandled error, request_id=%s", text_value(request_id(request)))
        error = InternalError("The gateway failed to handle this request.")
        headers = {**_metering_headers(request), X_REQUEST_ID: request_id(request)}
        return self.ingress.render(error, {**headers, **self.cors.answer(request.headers.get("Origin"))})

