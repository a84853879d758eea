"""The record of one proxied call: filled in as the call goes, read once at the end.

Settlement, the metrics and the access log all read this one object, so each fact about a call
(its status, its credits, its timings) is established in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CallOutcome:
    endpoint: str  # the upstream endpoint the call is served by: "/chat/completions", "/completions", "/embeddings"
    started: float  # monotonic, when the handler began
    request_id: str = ""
    # The ingress, the protocol the client spoke: "chat", "responses", "messages", "completions", "embeddings".
    api: str = "chat"
    account_id: int | None = None
    key_id: int | None = None
    plan: str = "-"
    model: str = "-"  # the catalog id asked for; "-" when it is not in the catalog
    tier: str = "-"
    stream: bool = False
    status: int = 200
    error_code: str = ""
    limit: str = ""  # which limit refused the call (429s)
    credits_charged: int = 0
    credits_refunded: int = 0
    answer_started: bool = False
    disconnected: bool = False
    provider: str = ""
    served_model: str = ""
    fallback: bool = False
    retries: int = 0  # upstream attempts beyond the first
    # (provider, kind); a list once there is one (an open stream holds no empty list: `upstream_failed`)
    upstream_failures: list[tuple[str, str]] | tuple[()] = ()
    # (provider, seconds from send to response headers) for every attempt that got an answer, errors included
    upstream_ttfbs: list[tuple[str, float]] | tuple[tuple[str, float]] | tuple[()] = ()
    upstream_seconds: float = 0.0  # the upstream's share of the call
    first_token_at: float | None = None  # monotonic, when the first data event went to the client
    finished_at: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def upstream_failed(self, provider: str, kind: str) -> None:
        """Note an upstream attempt's failure (the metrics count them by provider and kind)."""
        failures = self.upstream_failures
        if isinstance(failures, list):
            failures.append((provider, kind))
        else:
            self.upstream_failures = [(provider, kind)]

    def upstream_answered(self, provider: str, seconds: float) -> None:
        """Note how long an attempt waited for its answer's head; the first is held alone (the usual call)."""
        ttfbs = self.upstream_ttfbs
        if not ttfbs:
            self.upstream_ttfbs = ((provider, seconds),)
        else:
            self.upstream_ttfbs = [*ttfbs, (provider, seconds)]

    @property
    def total_seconds(self) -> float:
        return self.finished_at - self.started

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.total_seconds - self.upstream_seconds)

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second after the first token (None when it cannot be known)."""
        if self.first_token_at is None or self.completion_tokens < 2:
            return None
        span = self.finished_at - self.first_token_at
        return self.completion_tokens / span if span > 0 else None
