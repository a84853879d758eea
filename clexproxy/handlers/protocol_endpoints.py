"""The Messages and Responses APIs' endpoints beside their calls: counting tokens, and a stored response.

`POST /v1/messages/count_tokens` answers Anthropic's `{"input_tokens": N}` from the gateway's
own estimate (`protocols.messages.count_tokens`: no upstream is asked, so no credits), for the
key that asks (`x-api-key` or Bearer), in Anthropic's error shape. Like `GET /api/key` it takes
no slot of the plan's per-minute limit and has its own allowance per key (`COUNT_THROTTLE`), so
a client that counts before every call is not refused its calls for it.

Responses are never stored (the gateway is stateless: SPEC), so `GET` and `DELETE
/v1/responses/{id}` say so with a 404 in OpenAI's shape, to a key the gateway knows.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from aiohttp import web

from clexproxy.errors import ApiError, ModelNotFound, NotFound
from clexproxy.handlers.common import GATEWAY, read_json, request_id
from clexproxy.handlers.ingress import MESSAGES, anthropic_error
from clexproxy.handlers.key import LookupThrottle, checked_policy, limits_clock
from clexproxy.headers import REQUEST_ID
from clexproxy.protocols import messages

COUNT_TOKENS_PER_MINUTE = 120
COUNT_THROTTLE = LookupThrottle("POST /v1/messages/count_tokens", "count_tokens_requests_per_minute",
                                COUNT_TOKENS_PER_MINUTE)


def make_count_tokens(max_body_bytes: int) -> Callable[[web.Request], Coroutine[Any, Any, web.Response]]:
    """The handler of `POST /v1/messages/count_tokens`, whose bodies may be `max_body_bytes` long."""

    async def count_tokens(request: web.Request) -> web.Response:
        gateway = request.app[GATEWAY]
        headers = {REQUEST_ID: request_id(request)}
        try:
            authorization = request.headers.get("Authorization")
            if authorization is None and MESSAGES.key_header is not None:
                api_key = request.headers.get(MESSAGES.key_header)
                authorization = None if api_key is None else "Bearer " + api_key
            entry, account = gateway.directory.authenticate(authorization)
            policy = checked_policy(gateway.directory, entry.key_id, limits_clock(gateway.limits).time())
            headers.update(gateway.limits.peek_headers(account, None if policy is None else policy.budget))
            COUNT_THROTTLE.check(gateway, entry.key_id, headers)
            body = await read_json(request, max_body_bytes)
            tokens = messages.count_tokens(body)
            model = gateway.catalog.models.get(body["model"])
            if model is None or model.kind != "chat":
                raise ModelNotFound(f"Model '{body['model']}' is not available. Check /v1/models for supported "
                                    "models.", extra={"param": "model"})
        except ApiError as error:
            return anthropic_error(error, headers)
        return web.Response(body=orjson.dumps({"input_tokens": tokens}), content_type="application/json",
                            headers=headers)

    return count_tokens


async def stored_response(request: web.Request) -> web.Response:
    """`GET`/`DELETE /v1/responses/{id}`: a 404 that says why, once the key is known good."""
    request.app[GATEWAY].directory.authenticate(request.headers.get("Authorization"))
    raise NotFound("No such response: this gateway does not store responses. Keep the output of each call and "
                   "send the whole conversation in 'input'.", extra={"param": "response_id"})
