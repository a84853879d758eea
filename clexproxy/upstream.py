"""Provider calls: a connection pool per provider origin, retries, fallback, error mapping.

Before the first byte of an answer a failed or overloaded deployment is retried, with
backoff, on the model's next deployment and then on the configured fallback model. Errors
that reach the client say what happened in the caller's terms: never a provider URL, a
credential or a trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from clexproxy.catalog import Catalog, Deployment, Model, Provider
from clexproxy.config import Settings
from clexproxy.errors import ApiError, InternalError, InvalidRequest, ModelNotFound, ServiceUnavailable
from clexproxy.outcome import CallOutcome
from clexproxy.upstream_http import Origin, UpstreamResponse

log = logging.getLogger("clexproxy.upstream")

RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
OVERLOADED = frozenset({408, 429, 502, 503, 504, 529})
MAX_ERROR_BODY = 64 * 1024
_URL_RE = re.compile(r"https?://\S+")


@dataclass(slots=True)
class UpstreamReply:
    response: UpstreamResponse
    model: Model
    deployment: Deployment
    provider: Provider
    fallback: bool


@dataclass(slots=True)
class _Failure:
    kind: str  # "overloaded", "unreachable", "failed", "auth", "not_found", "invalid"
    status: int
    retry_after: float = 1.0
    message: str = ""  # the provider's own words, scrubbed; shown only for requests it rejected as invalid


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    text = _URL_RE.sub("[redacted-url]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text[:500]


def _error_message(raw: bytes) -> str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            return msg if isinstance(msg, str) else ""
        if isinstance(err, str):
            return err
    return ""


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(1.0, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


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

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._settings = settings
        self._catalog = catalog
        self._origins: dict[str, Origin] = {}
        self._heads: dict[tuple[str, str], tuple[Origin, bytes]] = {}
        self._plans: dict[str, list[tuple[Model, Deployment, bool]]] = {}
        self._auth: dict[str, str | None] = {}
        for provider in catalog.providers.values():
            key = os.environ.get(provider.api_key_env) if provider.api_key_env else None
            self._auth[provider.name] = f"Bearer {key}" if key else None
        self._secrets = tuple(v[7:] for v in self._auth.values() if v)

    def _target(self, provider: Provider, endpoint: str) -> tuple[Origin, bytes]:
        """The origin to POST to and the prebuilt request head (line, Host, fixed headers, credential)."""
        target = self._heads.get((provider.name, endpoint))
        if target is None:
            url = URL(provider.base_url + endpoint)
            origin_key = str(url.origin())
            origin = self._origins.get(origin_key)
            if origin is None:
                s = self._settings
                origin = self._origins[origin_key] = Origin(
                    url.origin(), limit=s.upstream_max_connections, keepalive_timeout=s.upstream_keepalive_timeout,
                    connect_timeout=s.upstream_connect_timeout, read_timeout=s.upstream_read_timeout,
                )
            fixed = {"Content-Type": "application/json", "Accept": "*/*", "Accept-Encoding": "identity"}
            auth = self._auth.get(provider.name)
            if auth:
                fixed["Authorization"] = auth
            target = self._heads[(provider.name, endpoint)] = (origin, origin.request_head(url.raw_path_qs, fixed))
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
        out = [(model, d, False) for d in model.deployments] * (1 + self._settings.upstream_retries)
        fallback_id = self._catalog.fallback_model
        fallback = self._catalog.models.get(fallback_id) if fallback_id else None
        if fallback is not None and fallback.id != model.id and fallback.kind == model.kind:
            out.extend((fallback, d, True) for d in fallback.deployments)
        return out

    async def send(
        self,
        model: Model,
        endpoint: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        call: CallOutcome,
    ) -> UpstreamReply:
        """POST to the first deployment that answers 200; raise the mapped ApiError when none does."""
        payloads: dict[str, bytes] = {}
        failure: _Failure | None = None
        not_found_only = True
        for attempt, (target, deployment, is_fallback) in enumerate(self._candidates(model)):
            if is_fallback and failure is not None and failure.kind == "not_found" and not_found_only:
                break  # the upstream says the model does not exist: a fallback would answer a different question
            provider = self._catalog.providers[deployment.provider]
            if attempt:
                await asyncio.sleep(min(1.0, self._settings.upstream_retry_backoff * (2 ** (attempt - 1))))
            payload = payloads.get(deployment.model)
            if payload is None:
                body["model"] = deployment.model
                payload = payloads[deployment.model] = orjson.dumps(body)
            origin, head = self._target(provider, endpoint)
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
                call.upstream_failures.append((provider.name, kind))
                failure, not_found_only = _Failure("unreachable", 0), False
                continue
            call.upstream_ttfbs.append((provider.name, time.monotonic() - sent))
            if response.status == 200:
                call.provider, call.served_model, call.fallback = provider.name, target.id, is_fallback
                return UpstreamReply(response, target, deployment, provider, is_fallback)
            call.upstream_failures.append((provider.name, f"{response.status // 100}xx"))
            failure = await self._classify(response, provider)
            not_found_only = not_found_only and failure.kind == "not_found"
            if failure.kind == "invalid":
                detail = f": {failure.message}" if failure.message else "."
                raise InvalidRequest(f"The provider rejected the request{detail}", error_type="upstream_error")
        raise self._final_error(model, failure)

    async def _classify(self, response: UpstreamResponse, provider: Provider) -> _Failure:
        try:
            raw = await response.content.read(MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            response.release()
        status = response.status
        message = _scrub(_error_message(raw), self._secrets)
        is_missing = status == 404 or b"model_not_found" in raw
        log.warning("upstream %s answered %d", provider.name, status)
        if is_missing:
            return _Failure("not_found", status)
        if status in (401, 403):
            return _Failure("auth", status)
        if status in OVERLOADED:
            return _Failure("overloaded", status, _retry_after(response.headers))
        if status in RETRYABLE:
            return _Failure("failed", status)
        return _Failure("invalid", status, message=message)

    def _final_error(self, model: Model, failure: _Failure | None) -> ApiError:
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

