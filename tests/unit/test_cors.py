"""`CorsPolicy` and the `[cors] allow_origins` setting: which origin gets which headers, and never credentials."""

from __future__ import annotations

import pytest

from clexproxy import headers
from clexproxy.config import ConfigError, load_settings
from clexproxy.cors import ALLOWED_REQUEST_HEADERS, EXPOSED, MAX_AGE_SECONDS, CorsPolicy, parse_origins

APP = "https://app.example.com"
LOCAL = "http://localhost:3000"


def test_any_origin_gets_star_the_exposed_headers_and_vary() -> None:
    answer = CorsPolicy("*").answer("https://anyone.example")
    assert answer["Access-Control-Allow-Origin"] == "*"
    assert answer["Vary"] == "Origin"
    exposed = [name.strip() for name in answer["Access-Control-Expose-Headers"].split(",")]
    assert exposed == list(EXPOSED)


def test_exposed_headers_are_what_browser_code_needs() -> None:
    wanted = {headers.REQUEST_ID, *headers.METERING, headers.RETRY_AFTER, headers.RETRY_AFTER_MS,
              headers.SERVED_MODEL, headers.OVERHEAD_MS}
    assert set(EXPOSED) == wanted and len(EXPOSED) == 11


def test_no_origin_no_headers() -> None:
    assert not CorsPolicy("*").answer(None)
    assert not CorsPolicy(APP).answer(None)
    assert not CorsPolicy("*").preflight(None, "POST", None)


def test_listed_origins_are_echoed_unlisted_get_nothing() -> None:
    policy = CorsPolicy(f"{APP}, {LOCAL}")
    assert policy.answer(APP)["Access-Control-Allow-Origin"] == APP
    assert policy.answer(LOCAL)["Access-Control-Allow-Origin"] == LOCAL
    assert policy.answer(APP)["Vary"] == "Origin"
    for other in ("https://evil.example", "https://app.example.com.evil.example", "null", APP + "/", APP.upper()):
        assert not policy.answer(other), other
        assert not policy.preflight(other, "POST", "content-type")
    assert policy.allows(APP) and not policy.allows("null") and not policy.allows(None)


def test_empty_turns_cors_off() -> None:
    policy = CorsPolicy("")
    assert not policy.enabled
    assert not policy.answer(APP) and not policy.preflight(APP, "POST", None)


def test_never_allow_credentials() -> None:
    """Bearer keys carry no cookies; without this header no browser lets another origin read a cookie's answer."""
    for policy in (CorsPolicy("*"), CorsPolicy(APP)):
        answers = [policy.answer(APP), policy.preflight(APP, "POST", "authorization, cookie")]
        for answer in answers:
            assert answer, policy
            assert not any(name.lower() == "access-control-allow-credentials" for name in answer)


def test_preflight_answers() -> None:
    answer = CorsPolicy(APP).preflight(APP, "POST", "Authorization, content-type, X-Stainless-OS, x-demo-slow")
    assert answer["Access-Control-Allow-Origin"] == APP
    assert answer["Access-Control-Allow-Methods"] == "POST"
    assert answer["Access-Control-Max-Age"] == str(MAX_AGE_SECONDS) == "7200"
    allowed = [name.strip() for name in answer["Access-Control-Allow-Headers"].split(",")]
    assert allowed == [*ALLOWED_REQUEST_HEADERS, "x-stainless-os", "x-demo-slow"]  # no duplicate of the fixed four
    assert "Origin" in answer["Vary"]


@pytest.mark.parametrize("requested", ["x bad", "x(y)", "x\u00e9", "a\tb", "é"])
def test_preflight_echoes_header_names_only(requested: str) -> None:
    allowed = CorsPolicy("*").preflight(APP, "POST", f"x-good, {requested}")["Access-Control-Allow-Headers"]
    assert allowed.split(", ") == [*ALLOWED_REQUEST_HEADERS, "x-good"]


def test_preflight_echo_is_bounded() -> None:
    requested = ", ".join(f"x-h{i}" for i in range(500))
    allowed = CorsPolicy("*").preflight(APP, "POST", requested)["Access-Control-Allow-Headers"].split(", ")
    assert len(allowed) <= len(ALLOWED_REQUEST_HEADERS) + 64


def test_parse_origins() -> None:
    assert parse_origins("*") == ("*",)
    assert parse_origins(" * ") == ("*",)
    assert parse_origins("") == ()
    assert parse_origins(" , ") == ()
    assert parse_origins(f"{APP},{LOCAL}, {APP}") == (APP, LOCAL)
    assert parse_origins("HTTPS://App.Example.com") == (APP,)  # browsers send origins lower-case
    assert parse_origins("chrome-extension://abcdef") == ("chrome-extension://abcdef",)


@pytest.mark.parametrize("bad", [f"*, {APP}", APP + "/", APP + "/path", "app.example.com", "null", "https://u@h"])
def test_parse_origins_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_origins(bad)


def test_setting_from_the_environment() -> None:
    assert load_settings(env={}).cors.allow_origins == "*"
    env = {"CLEX_CORS_ALLOW_ORIGINS": f"{APP}, {LOCAL}"}
    assert load_settings(env=env).value("cors_allow_origins") == f"{APP}, {LOCAL}"
    assert load_settings(env={"CLEX_CORS_ALLOW_ORIGINS": ""}).cors.allow_origins == ""
    with pytest.raises(ConfigError, match="cors_allow_origins"):
        load_settings(env={"CLEX_CORS_ALLOW_ORIGINS": APP + "/"})
