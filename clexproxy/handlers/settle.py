"""The end of every proxied call, however it ended: its credits settled, then one metrics pass and one log line.

Three kinds of call end here: one the full path (`handle`) refused before it reached an
upstream, one it admitted (with its `Admission`), and one the screen (`Screen`)
refused from a template. They all end in `finish_call`, so a screened refusal counts and logs
exactly as the full path's does, and an admitted call's outcome says what it was charged.

It is synchronous: it runs in the handler's `finally`, and a client that leaves (which cancels
the handler) cannot interrupt it half-way.
"""

from __future__ import annotations

import time

from clexproxy.gateway import Gateway
from clexproxy.limits.base import Admission
from clexproxy.outcome import CallOutcome


def finish_call(gateway: Gateway, call: CallOutcome, admission: Admission | None = None) -> None:
    """Settle `call`: refund its `admission` unless its answer started, else charge it; then count and log it."""
    if admission is not None:
        gateway.limits.settle(admission, call.answer_started, call.prompt_tokens, call.completion_tokens)
        if admission.refunded:
            call.credits_refunded = admission.cost
        else:
            call.credits_charged = admission.cost
    if call.disconnected:
        call.status = 499  # nginx's "client closed request": the client never saw a status
    call.finished_at = time.monotonic()
    gateway.metrics.call_finished(call)
    gateway.access_log.call(call)
