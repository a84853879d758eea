"""Issue 13, item 5: every ingress is metered alike, and the metrics and the access line say which one it was.

A call's `CallOutcome.api` (the protocol the client spoke) is a label of the request counter, the latency,
overhead and time-to-first-token histograms and the token counter, and a field of the access line right after
the endpoint. Each of the five api values is checked in both, on a real `Metrics` and a real `AccessLog`.
"""

from __future__ import annotations

import io

import orjson
import pytest

from clexproxy.observability.accesslog import AccessLog, call_fields, call_text
from clexproxy.observability.metrics import Metrics
from clexproxy.outcome import CallOutcome
from tests.metrics_samples import parse_samples, sample_total

APIS = ("chat", "responses", "messages", "completions", "embeddings")
UPSTREAM = {"chat": "/chat/completions", "responses": "/chat/completions", "messages": "/chat/completions",
            "completions": "/completions", "embeddings": "/embeddings"}


def served(api: str, *, stream: bool = True) -> CallOutcome:
    """A finished, answered call that came in through `api`."""
    return CallOutcome(
        UPSTREAM[api], 10.0, f"req_{api}", api=api, account_id=1, key_id=2, plan="pro", model="m/a", tier="large",
        stream=stream, credits_charged=3, provider="demo", upstream_seconds=0.2,
        first_token_at=10.1 if stream else None, finished_at=10.5, prompt_tokens=7, completion_tokens=11,
    )


def test_the_api_label_sets_are_pinned() -> None:
    metrics = Metrics()
    assert metrics.requests.labelnames == ("endpoint", "api", "model", "plan", "status_class")
    assert metrics.duration.labelnames == ("endpoint", "api", "stream")
    assert metrics.overhead.labelnames == ("endpoint", "api", "stream")
    assert metrics.ttft.labelnames == ("model", "api")
    assert metrics.tokens.labelnames == ("model", "kind", "api")


def test_each_api_shows_in_every_call_metric() -> None:
    metrics = Metrics()
    for api in APIS:
        metrics.call_started(UPSTREAM[api])
        metrics.call_finished(served(api))
    found = parse_samples(metrics.render().decode())
    for api in APIS:
        endpoint = UPSTREAM[api]
        assert sample_total(found, "clexproxy_requests_total", endpoint=endpoint, api=api, model="m/a", plan="pro",
                     status_class="2xx") == 1
        assert sample_total(found, "clexproxy_request_duration_seconds_count", endpoint=endpoint, api=api,
                     stream="true") == 1
        assert sample_total(found, "clexproxy_gateway_overhead_seconds_count", endpoint=endpoint, api=api,
                     stream="true") == 1
        assert sample_total(found, "clexproxy_stream_ttft_seconds_count", model="m/a", api=api) == 1
        assert sample_total(found, "clexproxy_tokens_total", model="m/a", kind="prompt", api=api) == 7
        assert sample_total(found, "clexproxy_tokens_total", model="m/a", kind="completion", api=api) == 11
    # Bounded: one series per api, nothing else split off.
    assert {dict(lbl)["api"] for (n, lbl) in found if n == "clexproxy_requests_total"} == set(APIS)
    assert sample_total(found, "clexproxy_requests_total") == len(APIS)


def test_the_same_call_shape_through_two_apis_is_two_series_and_one_through_the_same_api_is_one() -> None:
    metrics = Metrics()
    for api in ("chat", "responses", "chat"):
        metrics.call_started("/chat/completions")
        metrics.call_finished(served(api, stream=False))
    found = parse_samples(metrics.render().decode())
    assert sample_total(found, "clexproxy_requests_total", api="chat") == 2
    assert sample_total(found, "clexproxy_requests_total", api="responses") == 1
    assert sample_total(found, "clexproxy_request_duration_seconds_count", api="chat", stream="false") == 2
    assert sample_total(found, "clexproxy_stream_ttft_seconds_count") == 0
    assert sample_total(found, "clexproxy_in_flight_requests", endpoint="/chat/completions") == 0


def test_a_refused_call_is_counted_under_its_api_without_timings() -> None:
    metrics = Metrics()
    metrics.call_started("/chat/completions")
    metrics.call_finished(CallOutcome("/chat/completions", 1.0, "r", api="messages", status=401, finished_at=1.001))
    found = parse_samples(metrics.render().decode())
    assert sample_total(found, "clexproxy_requests_total", api="messages", status_class="4xx") == 1
    assert sample_total(found, "clexproxy_request_duration_seconds_count", api="messages") == 0


@pytest.mark.parametrize("api", APIS)
def test_the_text_access_line_says_the_api_right_after_the_endpoint(api: str) -> None:
    text = call_text(served(api))
    assert f" endpoint={UPSTREAM[api]} api={api} model=m/a " in text
    keys = [pair.split("=", 1)[0] for pair in text.split(" ")]
    assert keys[keys.index("endpoint") + 1] == "api"


@pytest.mark.parametrize("api", APIS)
def test_the_json_access_line_says_the_api_right_after_the_endpoint(api: str) -> None:
    fields = call_fields(served(api))
    keys = list(fields)
    assert fields["api"] == api and keys[keys.index("endpoint") + 1] == "api"


@pytest.mark.usefixtures("access_enabled")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_written_lines_carry_each_api(fmt: str) -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, fmt)
    for api in APIS:
        log.call(served(api))
    log.flush()
    lines = sink.getvalue().decode("ascii").splitlines()
    assert len(lines) == len(APIS)
    for api, line in zip(APIS, lines, strict=True):
        if fmt == "json":
            doc = orjson.loads(line)
            assert doc["endpoint"] == UPSTREAM[api] and doc["api"] == api
        else:
            assert f" endpoint={UPSTREAM[api]} api={api} " in line
