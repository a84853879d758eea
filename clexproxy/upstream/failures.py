"""What a failed upstream attempt means for the caller: its kind, whether to try again, and the error to send.

`UpstreamPool.send` asks `classify` about every non-200 answer and `final_error` once no
deployment answered; `Scrubber` makes a provider's own words fit for the client first. These run
on error paths only, never on an answered call's path.

Errors that reach the client say what happened in the caller's terms: never a provider URL,
host, credential or trace, and the model by its catalog id, not by a deployment's name.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiohttp
import orjson

from clexproxy.catalog import Deployment, Model, Provider
from clexproxy.errors import MAX_RETRY_AFTER, ApiError, InternalError, ModelNotFound, ServiceUnavailable
from clexproxy.upstream.http1 import UpstreamResponse

log = logging.getLogger("clexproxy.upstream.pool")  # the pool's: one name for every line of the upstream leg

RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
OVERLOADED = frozenset({408, 429, 502, 503, 504, 529})
MAX_ERROR_BODY = 64 * 1024

_URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S*")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+\S+")
# host:port with a host that is a bracketed IPv6 literal, a name (at least one letter: `12:30` is a time) or IPv4.
_HOST_PORT_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\]|(?<![\w.-])(?:(?=[\w.-]*[A-Za-z])[\w-]+(?:\.[\w-]+)*"
    r"|\d{1,3}(?:\.\d{1,3}){3})):\d{1,5}(?!\w)"
)
_IPV4_RE = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?\]")
_MODEL_MARK = "\x00"  # stands for the catalog id while the rest is scrubbed, so no pattern can touch the id


class Scrubber:
    """Makes upstream error text fit for a client: no credential, URL, host or `host:port`, the catalog's model id.

    Built once per pool from every provider credential and every provider host; applied on error
    paths only (a provider's message for a request it rejected, an error event in a stream).
    """

    def __init__(self, secrets: Iterable[str], hosts: Iterable[str]) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        names = sorted({h for h in hosts if h}, key=len, reverse=True)
        alternatives = "|".join(re.escape(h) for h in names)
        self._hosts = re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w-])", re.IGNORECASE) if names else None

    def __call__(self, text: str, upstream_name: str = "", model_id: str = "") -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        renamed = bool(upstream_name) and upstream_name != model_id
        if renamed:
            text = re.sub(r"(?<![\w./:-])" + re.escape(upstream_name) + r"(?![\w/-])", _MODEL_MARK, text)
        text = _BEARER_RE.sub("[redacted]", text)
        text = _URL_RE.sub("[redacted-url]", text)
        text = _HOST_PORT_RE.sub("[redacted-host]", text)
        text = _IPV6_RE.sub("[redacted-host]", text)
        text = _IPV4_RE.sub("[redacted-host]", text)
        if self._hosts is not None:
            text = self._hosts.sub("[redacted-host]", text)
        if renamed:
            text = text.replace(_MODEL_MARK, model_id)
        return text[:500]


@dataclass(slots=True)
class Failure:
    """One failed attempt, as `classify` read it."""

    kind: str  # "overloaded", "unreachable", "failed", "auth", "not_found", "invalid"
    status: int
    retry_after: float = 1.0
    message: str = ""  # the provider's own words, scrubbed; shown only for requests it rejected as invalid


def error_text(error: Any) -> str:
    """The message of an OpenAI-style error object (or of a bare string error)."""
    if isinstance(error, dict):
        msg = error.get("message") or error.get("detail")
        return msg if isinstance(msg, str) else ""
    return error if isinstance(error, str) else ""


def error_status(error: Any) -> int:
    """The HTTP status an error object states (`status`, or a numeric `code`), 0 when it states none."""
    if isinstance(error, dict):
        for name in ("status", "code"):
            value = error.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.isdigit():
                return int(value)
    return 0


def _error_message(raw: bytes) -> str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        return error_text(doc.get("error", doc))
    return ""


def retry_after(headers: Mapping[str, str]) -> float:
    """The upstream's `Retry-After` (`headers` by lower-case name) in seconds, delay or HTTP-date, between 1 s
    and a day (1 s when unusable)."""
    value = headers.get("retry-after")
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return 1.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not seconds >= 1.0:  # also NaN
        return 1.0
    return min(seconds, MAX_RETRY_AFTER)


async def classify(response: UpstreamResponse, provider: Provider, deployment: Deployment, target: Model,
                   scrub: Scrubber) -> Failure:
    """Read a non-200 answer's error (64 KiB at most), release the connection, and say what kind of failure it is."""
    status = response.status
    headers = response.headers if status in OVERLOADED else {}  # read before the connection goes back to the pool
    try:
        raw = await response.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    finally:
        response.release()
    message = scrub(_error_message(raw), deployment.model, target.id)
    is_missing = status == 404 or b"model_not_found" in raw
    log.warning("upstream %s answered %d", provider.name, status)
    if is_missing:
        return Failure("not_found", status)
    if status in (401, 403):
        return Failure("auth", status)
    if status in OVERLOADED:
        return Failure("overloaded", status, retry_after(headers))
    if status in RETRYABLE:
        return Failure("failed", status)
    return Failure("invalid", status, message=message)


def final_error(model: Model, failure: Failure | None) -> ApiError:
    """The error the caller gets once no deployment answered, from the last attempt's failure."""
    if failure is None:
        return ServiceUnavailable(f"Model '{model.id}' has no available deployment.", retry_after=5.0)
    if failure.kind == "not_found":
        return ModelNotFound(
            f"Model '{model.id}' is not available from its provider. Check /v1/models for supported models.",
            error_type="upstream_error",
        )
    if failure.kind in ("overloaded", "unreachable"):
        return ServiceUnavailable(
            f"Model '{model.id}' is overloaded or unreachable right now; retry shortly or use a smaller model.",
            retry_after=failure.retry_after,
            error_type="upstream_error",
        )
    if failure.kind == "auth":
        return InternalError(
            f"The provider for model '{model.id}' rejected the gateway's credentials.", error_type="upstream_error"
        )
    return InternalError(f"The provider for model '{model.id}' failed to answer.", error_type="upstream_error")
