"""Logging: one structured line per request, as JSON or as key=value text, on stdout.

The access line carries ids and numbers only: the request id, account and key ids (never a
key), model, provider, status, credits, tokens and durations — never a prompt, a key or a
provider credential.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

from clexproxy.outcome import CallOutcome

LogFormat = Literal["text", "json"]
ACCESS = logging.getLogger("clexproxy.access")


def call_fields(call: CallOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": call.request_id,
        "account_id": call.account_id,
        "key_id": call.key_id,
        "endpoint": call.endpoint,
        "model": call.model,
        "provider": call.provider or None,
        "stream": call.stream,
        "status": call.status,
        "credits": call.credits_charged,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "duration_ms": round(call.total_seconds * 1000, 3),
        "overhead_ms": round(call.overhead_seconds * 1000, 3),
        "upstream_ms": round(call.upstream_seconds * 1000, 3),
    }
    if call.error_code:
        fields["error"] = call.error_code
    if call.limit:
        fields["limit"] = call.limit
    if call.credits_refunded:
        fields["refunded"] = call.credits_refunded
    if call.first_token_at is not None:
        fields["ttft_ms"] = round((call.first_token_at - call.started) * 1000, 3)
    if call.fallback:
        fields["fallback_from"] = call.model
        fields["served_model"] = call.served_model
    if call.retries:
        fields["retries"] = call.retries
    if call.disconnected:
        fields["client_disconnected"] = True
    return fields


def log_call(call: CallOutcome) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("access", extra={"access": call_fields(call)})


QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: DEBUG, not INFO


def log_request(request_id: str, method: str, path: str, status: int, started: float) -> None:
    """The access line of a request that is not a proxied call (models, pricing, admin, probes, errors)."""
    level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
    if ACCESS.isEnabledFor(level):
        fields = {
            "request_id": request_id,
            "method": method,
            "path": path[:200],
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
        }
        ACCESS.log(level, "access", extra={"access": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access records put their fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if access is not None:
            doc.update(access)
        else:
            doc["message"] = record.getMessage()
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines; access records as `key=value` pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if access is not None:
            record.message = " ".join(f"{k}={'-' if v is None else v}" for k, v in access.items())
        return super().formatMessage(record)


def configure_logging(level: str, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.Formatter.converter = time.gmtime
