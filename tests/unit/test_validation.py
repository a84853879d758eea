"""Request validation: SPEC's defaults only where a field is absent, range edges, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from clexproxy.errors import InvalidRequest
from clexproxy.handlers.validation import validate_chat, validate_embeddings

MODEL = "meta/llama-3.3-70b-instruct"
EMBED = "nvidia/nv-embedqa-e5-v5"
HELLO = [{"role": "user", "content": "Hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, **fields}


def rejected(body: Any, field: str, *, embeddings: bool = False) -> InvalidRequest:
    """The call must fail with a 400 whose message and `param` name `field`."""
    with pytest.raises(InvalidRequest) as info:
        (validate_embeddings if embeddings else validate_chat)(body)
    error = info.value
    assert error.status == 400 and error.code == "invalid_request_error"
    assert field in error.message, error.message
    if "param" in error.extra:
        assert field in error.extra["param"]
    return error


# defaults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, True),
        ("", True),
        ("*/*", True),
        ("text/event-stream", True),
        ("application/json, text/event-stream", True),
        ("application/json, */*;q=0.1", True),
        ("application/json", False),  # what the OpenAI SDKs send
        ("Application/JSON; charset=utf-8", False),
    ],
)
def test_stream_default_follows_accept(accept: str | None, expected: bool) -> None:
    from clexproxy.handlers.validation import default_stream

    assert default_stream(accept) is expected
    body = chat()
    _, stream, _ = validate_chat(body, default_stream(accept))
    assert stream is expected and body["stream"] is expected


def test_defaults_applied_when_absent() -> None:
    body = chat()
    model, stream, wants_usage = validate_chat(body)
    assert (model, stream, wants_usage) == (MODEL, True, False)
    assert body["stream"] is True and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert "max_tokens" not in body and "max_completion_tokens" not in body


def test_explicit_values_kept() -> None:
    """Falsy values (temperature 0, stream False) are values, not absences."""
    body = chat(stream=False, temperature=0, top_p=0.0, max_tokens=1)
    _, stream, _ = validate_chat(body)
    assert stream is False
    assert body["stream"] is False and body["temperature"] == 0 and body["top_p"] == 0.0
    assert body["max_tokens"] == 1


def test_other_fields_untouched() -> None:
    extra = {"tools": [{"type": "function"}], "seed": 7, "n": 2, "stop": ["x"], "user": "u", "logprobs": True}
    body = chat(**extra)
    validate_chat(body)
    for name, value in extra.items():
        assert body[name] == value


# ranges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1, 2, 2.0, 1.999])
def test_temperature_edges_ok(value: float) -> None:
    validate_chat(chat(temperature=value))


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_top_p_edges_ok(value: float) -> None:
    validate_chat(chat(top_p=value))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": 2.0001}, "temperature"),
        ({"temperature": -0.0001}, "temperature"),
        ({"top_p": 1.0001}, "top_p"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_out_of_range(fields: dict[str, Any], field: str) -> None:
    rejected(chat(**fields), field)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": True}, "temperature"),
        ({"temperature": False}, "temperature"),
        ({"top_p": True}, "top_p"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": 1}, "stream"),
        ({"stream": "true"}, "stream"),
    ],
)
def test_bools_are_not_numbers_and_numbers_are_not_bools(fields: dict[str, Any], field: str) -> None:
    rejected(chat(**fields), field)


# every error names its field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "", "messages": HELLO}, "model"),
        ({"model": ["m"], "messages": HELLO}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": {}}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [HELLO[0], 3]}, "messages[1]"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (chat(stream_options="yes"), "stream_options"),
    ],
)
def test_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    rejected(body, field)


def test_body_must_be_an_object() -> None:
    bodies: list[Any] = [[], "x", 3, None]
    for body in bodies:
        with pytest.raises(InvalidRequest, match="object"):
            validate_chat(body)
        with pytest.raises(InvalidRequest, match="object"):
            validate_embeddings(body)


def test_all_known_roles_accepted() -> None:
    roles = ["system", "developer", "user", "assistant", "tool", "function"]
    validate_chat(chat(messages=[{"role": r, "content": "x"} for r in roles]))


def test_rejected_body_gets_no_defaults_past_the_error() -> None:
    """A body that fails before the defaults step must not be half-mutated into something that looks valid."""
    body = {"model": MODEL, "messages": []}
    rejected(body, "messages")
    assert "stream" not in body


# stream_options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "wants"),
    [
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
        ({"include_usage": "true"}, False),
    ],
)
def test_wants_usage(options: dict[str, Any] | None, wants: bool) -> None:
    body = chat() if options is None else chat(stream_options=options)
    assert validate_chat(body)[2] is wants
    if options is not None:
        assert body["stream_options"] == options  # passed through untouched


# embeddings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]], ["a"]])
def test_embedding_inputs_ok(data: Any) -> None:
    body = {"model": EMBED, "input": data}
    assert validate_embeddings(body) == EMBED
    assert body["input"] == data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "input"),
        (None, "input"),
        (3, "input"),
        ({"text": "x"}, "input"),
        ([None], "input[0]"),
        (["a", None], "input[1]"),
        ([True, False], "input[0]"),
        ([[1, True]], "input[0]"),
        ([1.5], "input[0]"),
        ([["a"]], "input[0]"),
    ],
)
def test_embedding_inputs_rejected(data: Any, field: str) -> None:
    body = {"model": EMBED} if data is None else {"model": EMBED, "input": data}
    rejected(body, field, embeddings=True)


def test_embeddings_need_a_model() -> None:
    rejected({"input": "x"}, "model", embeddings=True)
