"""Issue 10, the call's own path in units: the stream default (14), nesting and roles (5), sampling flags (18).

A fallback's charge in the limits (17) is tested with the limits (test_limits_local)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from clexproxy.catalog import DEFAULT_MODELS, Plan
from clexproxy.config import load_settings
from clexproxy.errors import InvalidRequest
from clexproxy.handlers.validation import (
    MAX_DEPTH,
    check_chat,
    default_stream,
    too_deep,
    user_agent_prefixes,
    validate_chat,
)

MODEL = "meta/llama-3.3-70b-instruct"
HELLO = [{"role": "user", "content": "Hi"}]
VERCEL = "ai-sdk/openai-compatible/1.0.19 ai-sdk/provider-utils/3.0.10 runtime/node.js/22"
AGENTS = user_agent_prefixes(load_settings(env={}).sse.json_user_agents)


def nested(depth: int) -> Any:
    """A document of `depth` nested containers (lists, with an object innermost)."""
    doc: Any = {}
    for _ in range(depth - 1):
        doc = [doc]
    return doc


# 14: what a call without `stream` gets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "json"),
    [
        (VERCEL, True),  # the AI SDK 5 providers' User-Agent
        ("ai-sdk/openai/2.0.30 ai-sdk/provider-utils/3.0.9 runtime/browser", True),
        ("ai-sdk/openai-compatible-2.0.1 ai-sdk-provider-utils/4.0.15 runtime/node.js-22", True),  # RFC 9110 form
        ("ai-sdk-provider-utils/4.0.15 runtime/bun-1.3.9", True),
        ("my-app/1.0 ai-sdk/openai-compatible/1.0.19", True),  # a client's own product first
        ("AI-SDK/openai-compatible/1.0.19", True),
        ("curl/8.5.0", False),
        ("python-requests/2.32.3", False),
        ("OpenAI/Python 1.51.0", False),
        ("openai-sdk/1.0", False),  # "ai-sdk" inside another product's name is not the AI SDK
        ("node", False),
        (None, False),
    ],
)
def test_user_agents_known_to_mean_absent_is_false(user_agent: str | None, json: bool) -> None:
    assert default_stream("*/*", user_agent, AGENTS) is (not json)


@pytest.mark.parametrize(
    ("accept", "user_agent", "plan_default", "expected"),
    [
        (None, None, True, True),  # a client that says nothing: SPEC's SSE
        ("*/*", None, True, True),
        ("application/json", None, True, False),  # the OpenAI SDKs
        ("application/json", None, False, False),
        ("text/event-stream", VERCEL, True, True),  # a client that asks for events gets them
        ("text/event-stream", None, False, True),
        ("*/*", VERCEL, True, False),  # generateText
        ("application/json, text/event-stream", VERCEL, True, False),  # both named: the User-Agent decides
        ("application/json, text/event-stream", None, False, False),  # then the plan
        ("*/*", None, False, False),  # a plan that answers JSON by default
        ("*/*", "curl/8.5.0", False, False),
        (None, None, False, False),
    ],
)
def test_stream_default_precedence(accept: str | None, user_agent: str | None, plan_default: bool,
                                   expected: bool) -> None:
    assert default_stream(accept, user_agent, AGENTS, plan_default) is expected


def test_json_user_agents_setting_is_a_comma_separated_prefix_list() -> None:
    assert AGENTS == ("ai-sdk/", "ai-sdk-")
    assert user_agent_prefixes(" My-Client/ ,, other ") == ("my-client/", "other")
    assert user_agent_prefixes("") == ()
    assert default_stream("*/*", VERCEL, user_agent_prefixes("")) is True  # an empty list matches nothing
    assert default_stream("*/*", "other/2", user_agent_prefixes("my-client/, other")) is False


def test_check_chat_leaves_the_body_alone_and_says_when_stream_is_absent() -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO}
    assert check_chat(body) == (MODEL, None, False)
    assert body == {"model": MODEL, "messages": HELLO}
    assert check_chat({**body, "stream": False})[1] is False
    with pytest.raises(InvalidRequest, match="'stream'"):
        check_chat({**body, "stream": None})
    # validate_chat is check_chat plus every default, as before
    assert validate_chat(body) == (MODEL, True, False) and body["temperature"] == 0.7 and body["top_p"] == 0.9


def test_plan_default_stream_from_config(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[plans.batch]\ncredits_per_day = 10\nrequests_per_minute = 10\nmax_keys = 1\n'
                    'default_stream = false\n[plans.free]\ndefault_stream = false\n'
                    '[sse]\njson_user_agents = "x/"\n')
    settings = load_settings(path, env={})
    assert settings.catalog.plans["batch"].default_stream is False
    assert settings.catalog.plans["free"] == Plan("free", 100, 40, 1, default_stream=False)
    assert settings.catalog.plans["pro"].default_stream is True
    assert settings.sse.json_user_agents == "x/"
    assert load_settings(env={"CLEX_SSE_JSON_USER_AGENTS": "y/"}).sse.json_user_agents == "y/"


# 5: nesting orjson cannot write, roles that are not strings ----------------------------------------


@pytest.mark.parametrize("depth", [1, 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 300, 1024])
def test_too_deep_is_exactly_what_orjson_refuses_to_write(depth: int) -> None:
    doc = nested(depth)
    try:
        orjson.dumps(doc)
        writable = True
    except orjson.JSONEncodeError:
        writable = False
    assert too_deep(doc) is (not writable)
    assert too_deep({"model": MODEL, "messages": HELLO, "x": nested(depth)}) is (depth + 1 > MAX_DEPTH)


def test_too_deep_sees_a_deep_branch_among_shallow_ones() -> None:
    doc = {"a": [1, 2, {"b": "c"}], "d": [[[]]], "e": {"f": nested(MAX_DEPTH)}}
    assert too_deep(doc) is True
    assert too_deep({"a": [1, 2, {"b": "c"}], "e": {"f": nested(MAX_DEPTH - 2)}}) is False
    assert too_deep("text") is False and too_deep(7) is False


@pytest.mark.parametrize(("role", "kind"), [(["user"], "array"), ({"r": "user"}, "object"), (7, None),
                                            (True, None), ("wizard", None)])
def test_a_role_of_any_type_is_a_400_naming_it(role: Any, kind: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_chat({"model": MODEL, "messages": [HELLO[0], {"role": role, "content": "x"}]})
    error = info.value
    assert error.status == 400 and error.extra["param"] == "messages[1].role"
    assert "messages[1].role" in error.message
    if kind:
        assert f"expected a string, got {kind}" in error.message


def test_a_long_unknown_role_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_chat({"model": MODEL, "messages": [{"role": "r" * 10_000, "content": "x"}]})
    assert len(info.value.message) < 200


# 18: the model-level flag ---------------------------------------------------------------------------


def test_sampling_defaults_flag_shipped_and_configured(tmp_path: Any) -> None:
    assert DEFAULT_MODELS[MODEL].sampling_defaults is True
    assert DEFAULT_MODELS["moonshotai/kimi-k2-thinking"].sampling_defaults is False
    assert DEFAULT_MODELS["moonshotai/kimi-k2.5"].sampling_defaults is False
    path = tmp_path / "c.toml"
    path.write_text(f'[models."{MODEL}"]\nsampling_defaults = false\n'
                    '[models."moonshotai/kimi-k2.5"]\nsampling_defaults = true\n'
                    '[models."x/new"]\ndeployments = [{provider = "nvidia"}]\n')
    models = load_settings(path, env={}).catalog.models
    assert models[MODEL].sampling_defaults is False and models[MODEL].tier == "large"
    assert models["moonshotai/kimi-k2.5"].sampling_defaults is True
    assert models["x/new"].sampling_defaults is True
    path.write_text(f'[models."{MODEL}"]\nsampling_defaults = "no"\n')
    with pytest.raises(ValueError, match="sampling_defaults"):
        load_settings(path, env={})

