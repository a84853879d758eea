"""Issue 10, item 3: a text log line says what the gateway wrote, whatever a client sends.

A text line is `key=value` pairs; a value that is not plain is quoted with escapes. Each test
parses the line back the way a log shipper would and checks it holds exactly the fields written.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clexproxy.observability.accesslog import AccessLog, call_fields, call_text
from clexproxy.observability.logsetup import configure_logging
from clexproxy.outcome import CallOutcome

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)')

HOSTILE_IDS = [
    "abc status=200 credits=0",  # spaces: fake fields
    'x" account_id="1',  # a quote
    "back\\slash",
    "cr\rlf\nnext line",
    "\x1b[31mred\x1b[0m\x07",  # terminal escapes
    "caf\u00e9 \u202eevil\u2028\U0001f600",  # non-ASCII, a bidi override, a line separator
    "",
    "=",
]


def decode(raw: str) -> str:
    return codecs.decode(raw[1:-1], "unicode_escape") if raw.startswith('"') else raw


def pairs(text: str) -> list[tuple[str, str]]:
    """The key=value pairs of `text`, decoded; anything a pair cannot explain fails the test."""
    found, at = [], 0
    while at < len(text):
        match = _PAIR.match(text, at)
        assert match is not None, f"not a key=value pair at {text[at:]!r}"
        found.append((match.group(1), decode(match.group(2))))
        at = match.end()
    return found


def outcome(request_id: str) -> CallOutcome:
    return CallOutcome(
        "/chat/completions", 1.0, request_id, account_id=1, key_id=2, plan="pro", model="m/a", tier="large",
        stream=True, credits_charged=3, provider="demo", served_model="m/b", fallback=True, retries=1,
        error_code="service_unavailable", upstream_seconds=0.25, first_token_at=1.1, finished_at=1.5,
    )


@pytest.mark.parametrize("request_id", HOSTILE_IDS)
def test_a_client_request_id_is_one_value_of_one_field(request_id: str) -> None:
    call = outcome(request_id)
    text = call_text(call)
    assert text.isascii() and text.isprintable()
    found = pairs(text)
    assert [k for k, _ in found] == list(call_fields(call))
    assert dict(found)["request_id"] == request_id


@pytest.mark.parametrize("request_id", ["req_1f2e3d4c5b_1a", "3f2a9c1e-8b7d-4e6f-a5b4-c3d2e1f0a9b8", "log-me"])
def test_plain_values_are_written_as_they_are(request_id: str) -> None:
    text = call_text(outcome(request_id))
    assert text.startswith(f"request_id={request_id} ") and '"' not in text


@pytest.mark.usefixtures("access_enabled")
@pytest.mark.parametrize("request_id", HOSTILE_IDS)
def test_a_request_line_cannot_be_forged_by_its_path_method_or_id(request_id: str) -> None:
    sink = io.BytesIO()
    log = AccessLog(sink, "text")
    path = "/v1/a b status=200\r\n2026-11-30 00:00:00,000 INFO clexproxy.access \x1b[2K"
    log.request(request_id, "GET /x", path, 404, time.monotonic())
    log.flush()
    text = sink.getvalue().decode("ascii")
    assert text.count("\n") == 1 and text.endswith("\n") and text[:-1].isprintable()
    found = pairs(text[:-1].split(" clexproxy.access ", 1)[1])
    assert [k for k, _ in found] == ["request_id", "method", "path", "status", "duration_ms"]
    assert found[0][1] == request_id and found[1][1] == "GET /x" and found[2][1] == path


@given(st.text())
def test_any_value_comes_back_whole(value: str) -> None:
    from clexproxy.observability.accesslog import text_value

    written = text_value(value)
    assert written.isascii() and written.isprintable()
    assert " " not in written or written.startswith('"')
    assert pairs(f"k={written}") == [("k", value)]


def test_other_log_records_stay_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", "text")
        log = logging.getLogger("clexproxy.test")
        log.warning("unhandled error, request_id=%s", "x\r\n2026-11-30 00:00:00,000 INFO forged \x1b[2K\u2028")
        try:
            raise ValueError("bad\x1b]0;title\x07")
        except ValueError:
            log.exception("failed")
        sys.stdout.flush()
    finally:
        root.handlers[:], root.level = handlers, level
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first.endswith("request_id=x\\x0d\\x0a2026-11-30 00:00:00,000 INFO forged \\x1b[2K\\u2028")
    assert "\x1b" not in rest and "\x07" not in rest and "ValueError: bad\\x1b]0;title\\x07" in rest
