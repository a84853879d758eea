"""The screen: refused calls answered before they reach `handle`, for a fraction of its CPU.

A flood of calls with a bad key or a spent per-minute limit must cost the gateway little: it
is what a misbehaving client or an attack looks like. The lean connection (`LeanConnection`)
asks the screen about a plain call whose body came with its head, while some call was refused a
moment ago (`RecentRefusals`): when the key or the limit refuses it, the 429 or 401 is written at
once, with the same headers, body, metrics and access line as `handle` would give, rendered from
a template (`RateLimitAnswers`, `raw_response`) with no task, no `ProxiedRequest` and no body
parse. Every other call goes on to `handle`, which authenticates it and counts it as ever.
"""

from __future__ import annotations

import time

from clexproxy.errors import ApiError, RateLimited
from clexproxy.gateway import Gateway
from clexproxy.handlers.common import pick_request_id
from clexproxy.handlers.ingress import Ingress
from clexproxy.handlers.settle import finish_call
from clexproxy.outcome import CallOutcome
from clexproxy.server.raw_answers import RateLimitAnswers, raw_response

_RPM = "requests_per_minute"


class Screen:
    """The refusals answered before a call reaches `handle`: a key refused a moment ago, or a spent per-minute limit."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.refusals = gateway.refusals
        self.screened = 0  # calls answered here, since start
        self.rate_limits = RateLimitAnswers()

    def refusal(self, ingress: Ingress, authorization: str | None, sent_id: str | None) -> bytes | None:
        """The answer for a call its key or its spent per-minute limit refuses, counted as `handle` counts it.

        None sends the call down the full path, which authenticates it and counts it against the
        limit. Only calls whose Authorization header was refused a moment ago are looked at.
        """
        now = time.monotonic()
        refusals = self.refusals
        if not ingress.screened or not refusals.seen(authorization, now):
            return None
        gateway = self.gateway
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
        return self.rate_limits.render(account.plan, bucket, remaining, wall, call.request_id)

    def _refused(self, call: CallOutcome, authorization: str | None, sent_id: str | None) -> None:
        """Count and log a screened refusal, and remember its Authorization header a while longer."""
        self.refusals.note(authorization, call.started)
        call.request_id = pick_request_id(sent_id)
        self.screened += 1
        self.gateway.metrics.call_started(call.endpoint)
        finish_call(self.gateway, call)
