"""The ``x-demo-*`` request headers that make the demo upstream slow, failing or short, and the failures they inject.

All are optional; a malformed value gets a 400 ``invalid_demo_header`` so a typo can't silently test
the wrong thing.

    ``x-demo-tokens: N``            completion tokens to produce (default 8). ``max_completion_tokens`` /
                                    ``max_tokens`` in the body cap it, and then ``finish_reason`` is ``"length"``.
    ``x-demo-delay-ms: F``          delay between streamed content chunks (streaming only).
    ``x-demo-ttft-ms: F``           delay before the first data chunk of a stream (its headers are already out)
                                    or before a non-streaming chat/embeddings body.
    ``x-demo-headers-delay-ms: F``  delay before any response headers at all, error responses included.
    ``x-demo-status: CODE``         answer with this 4xx/5xx status and an OpenAI-style error body
                                    (429 ``rate_limit_error``, 404 ``model_not_found``, 5xx ``server_error`` ...).
    ``x-demo-fail-times: K``        with ``x-demo-fail-key: STR``: only the first K requests carrying that key fail
                                    (with ``x-demo-status``, default 500); later ones succeed. Requests without a
                                    fail-key share the key ``""``. Counters live as long as the app.
    ``x-demo-retry-after: S``       adds ``Retry-After: S`` to an injected error response.
    ``x-demo-drop-after: N``        streaming: close the connection after N content chunks, before usage and
                                    ``[DONE]``; non-streaming: send the headers (with Content-Length), then close the
                                    connection before the body. Either way the client sees a truncated payload.
    ``x-demo-model-missing: 1``     404 ``model_not_found`` for the requested model.

Order of evaluation: knob parsing, headers delay, body validation (400), model-missing (404), injected status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from clexproxy.demo.errors import DemoError, bad_request, injected_error, model_not_found
from clexproxy.demo.recorder import DemoState

DEFAULT_COMPLETION_TOKENS: Final = 8
_MAX_TOKENS_KNOB: Final = 1_000_000


@dataclass(slots=True)
class Knobs:
    """Parsed ``x-demo-*`` headers (delays already in seconds)."""

    tokens: int = DEFAULT_COMPLETION_TOKENS
    delay_s: float = 0.0
    ttft_s: float = 0.0
    headers_delay_s: float = 0.0
    status: int | None = None
    fail_times: int | None = None
    fail_key: str = ""
    retry_after: str | None = None
    drop_after: int | None = None
    model_missing: bool = False


def _knob_error(name: str, expected: str, value: str) -> DemoError:
    return bad_request(f"{name} must be {expected}, got {value!r}", "invalid_demo_header")


def _int_knob(headers: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise _knob_error(name, f"an integer in [{low}, {high}]", value) from None
    if not low <= number <= high:
        raise _knob_error(name, f"an integer in [{low}, {high}]", value)
    return number


def _ms_knob(headers: Mapping[str, str], name: str) -> float:
    """A delay in (float) milliseconds, returned in seconds."""
    value = headers.get(name)
    if value is None:
        return 0.0
    try:
        millis = float(value.strip())
    except ValueError:
        raise _knob_error(name, "a non-negative number of milliseconds", value) from None
    if not math.isfinite(millis) or millis < 0:
        raise _knob_error(name, "a non-negative number of milliseconds", value)
    return millis / 1000.0


def _flag_knob(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise _knob_error(name, "a boolean such as 1 or 0", value)


def parse_knobs(headers: Mapping[str, str]) -> Knobs:
    """Read every knob; raises a 400 ``DemoError`` on a malformed value."""
    tokens = _int_knob(headers, "x-demo-tokens", 0, _MAX_TOKENS_KNOB)
    return Knobs(
        tokens=DEFAULT_COMPLETION_TOKENS if tokens is None else tokens,
        delay_s=_ms_knob(headers, "x-demo-delay-ms"),
        ttft_s=_ms_knob(headers, "x-demo-ttft-ms"),
        headers_delay_s=_ms_knob(headers, "x-demo-headers-delay-ms"),
        status=_int_knob(headers, "x-demo-status", 400, 599),
        fail_times=_int_knob(headers, "x-demo-fail-times", 0, 2**31),
        fail_key=headers.get("x-demo-fail-key", ""),
        retry_after=headers.get("x-demo-retry-after"),
        drop_after=_int_knob(headers, "x-demo-drop-after", 0, _MAX_TOKENS_KNOB),
        model_missing=_flag_knob(headers, "x-demo-model-missing"),
    )


def _injected_status(state: DemoState, knobs: Knobs) -> int | None:
    """The status to fail with, counting fail-key attempts so only the first K fail."""
    if knobs.fail_times is None:
        return knobs.status
    seen = state.fail_counts.get(knobs.fail_key, 0) + 1
    state.fail_counts[knobs.fail_key] = seen
    if seen > knobs.fail_times:
        return None
    return knobs.status if knobs.status is not None else 500


def preflight(state: DemoState, knobs: Knobs, model: str | None) -> None:
    """Apply model-missing and the injected status, after body validation and before any work."""
    if knobs.model_missing and model is not None:
        raise model_not_found(model)
    status = _injected_status(state, knobs)
    if status is not None:
        raise injected_error(status, model, knobs.retry_after)
