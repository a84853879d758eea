"""The text access line says exactly what the JSON line says, field for field and in the same order."""

from __future__ import annotations

import pytest

from clexproxy.observability.accesslog import call_fields, call_text
from clexproxy.outcome import CallOutcome


def outcomes() -> list[CallOutcome]:
    plain = CallOutcome("/chat/completions", 100.0, "req_1", finished_at=100.0123456)
    refused = CallOutcome("/chat/completions", 5.0, "req_2", account_id=7, key_id=9, plan="free", status=429,
                          error_code="rate_limit_exceeded", limit="requests_per_minute", finished_at=5.00004)
    full = CallOutcome(
        "/chat/completions", 1.0, "abc", account_id=1, key_id=2, plan="pro", model="m/a", tier="large",
        stream=True, credits_charged=3, provider="demo", served_model="m/b", fallback=True, retries=2,
        upstream_seconds=0.25, first_token_at=1.1, finished_at=1.5, prompt_tokens=9, completion_tokens=40,
    )
    broken = CallOutcome("/embeddings", 2.0, "x", account_id=3, key_id=4, status=499, disconnected=True,
                         credits_refunded=5, error_code="service_unavailable", upstream_seconds=3.0, finished_at=2.5)
    return [plain, refused, full, broken]


@pytest.mark.parametrize("call", outcomes(), ids=["plain", "refused", "full", "broken"])
def test_text_pairs_match_the_fields(call: CallOutcome) -> None:
    fields = call_fields(call)
    pairs = [pair.split("=", 1) for pair in call_text(call).split(" ")]
    assert [k for k, _ in pairs] == list(fields)
    for key, text in pairs:
        value = fields[key]
        if key.endswith("_ms"):
            assert float(text) == value and len(text.split(".")[1]) == 3
        else:
            assert text == ("-" if value is None else str(value))
