"""Issue 10, upstream side: misbehaving upstreams, through clexproxy, seen by real clients.

A scripted upstream (a raw asyncio HTTP/1.1 server, so it can misbehave as no framework would:
drop after its headers, send bytes after `[DONE]`, never end its body) answers each request by
the upstream model name the gateway asked for; the TOML catalog of each test maps CLEX models to
those names. The demo upstream serves the cases a well-behaved upstream shows (it echoes the
model name it was asked for).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from clexproxy.demo.upstream import DemoServer

from .conftest import GatewayFactory, RunningGateway

SECRET = "sk-hardening-PROVIDER-credential-0123456789"
HELLO = [{"role": "user", "content": "Hello!"}]
MODEL = "clex/answer"  # standard tier: 2 credits
BACKUP = "clex/backup"  # the fallback model, cheap: 1 credit

Script = Callable[[asyncio.StreamWriter, dict[str, Any]], Awaitable[bool]]  # True: keep the connection


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def event(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def token_chunk(model: str, text: str) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                  "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def finish_chunk(model: str) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})


def usage_only(model: str) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


DONE = b"data: [DONE]\n\n"


def good_stream(model: str) -> bytes:
    return token_chunk(model, "Hi ") + token_chunk(model, "there") + finish_chunk(model) + usage_only(model) + DONE


def completion(model: str) -> bytes:
    return orjson.dumps({
        "id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    })


def response(status: int, body: bytes, *headers: str, content_type: str = "application/json") -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def good(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    """A well-behaved OpenAI-compatible answer, streamed or not."""
    if body.get("stream"):
        writer.write(SSE_HEAD + chunked(good_stream(body["model"])) + END)
    else:
        writer.write(response(200, completion(body["model"])))
    return True


class ScriptedUpstream:
    """A raw HTTP/1.1 upstream: each request is answered by `scripts[<model the gateway asked for>]`."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = {"good": good, **scripts}
        self.seen: list[dict[str, Any]] = []
        self.closing = asyncio.Event()  # scripts that hold a connection open wait for it
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = orjson.loads(await reader.readexactly(length))
                self.seen.append(body)
                keep = await self.scripts[body["model"]](writer, body)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self._connections[task]
            writer.close()


@pytest.fixture(autouse=True)
def access_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clexproxy.access")  # the level `serve` sets by default


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[dict[str, Script]], Awaitable[ScriptedUpstream]]]:
    servers: list[ScriptedUpstream] = []

    async def start(scripts: dict[str, Script]) -> ScriptedUpstream:
        server = await ScriptedUpstream(scripts).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def catalog(url: str, models: dict[str, list[str]], fallback: str | None = BACKUP, *,
            pass_headers: bool = False) -> str:
    """TOML for a provider at `url` (credential SECRET) and CLEX models served by upstream names there."""
    text = (f'[providers.scripted]\nbase_url = "{url}"\napi_key_env = "HARDENING_PROVIDER_KEY"\n'
            + ('pass_headers = ["x-demo-"]\n' if pass_headers else "")
            + f'[catalog]\nfallback_model = "{fallback or ""}"\n')
    for mid, names in models.items():
        tier = "cheap" if mid == BACKUP else "standard"
        deployments = ", ".join(f'{{provider = "scripted", model = "{name}"}}' for name in names)
        text += f'[models."{mid}"]\ntier = "{tier}"\ndeployments = [{deployments}]\n'
    return text


async def start(make_gateway: GatewayFactory, url: str,
                models: dict[str, list[str]], fallback: str | None = BACKUP, *, pass_headers: bool = False,
                **settings: Any) -> tuple[RunningGateway, str, io.BytesIO]:
    """A gateway on the scripted catalog, a pro key, and its JSON access log."""
    access = io.BytesIO()
    gw = await make_gateway(config=catalog(url, models, fallback, pass_headers=pass_headers), demo=False,
                            env={"HARDENING_PROVIDER_KEY": SECRET}, access_stream=access, log_format="json",
                            **settings)
    key = await gw.add_key("acme", "pro")
    return gw, key, access


async def call(gw: RunningGateway, key: str, stream: bool, model: str = MODEL,
               **headers: str) -> tuple[int, bytes, dict[str, str]]:
    body = {"model": model, "messages": HELLO, "stream": stream}
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    ) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def log_line(gw: RunningGateway, access: io.BytesIO, count: int = 1) -> dict[str, Any]:
    """The `count`-th access-log line, once written (settlement runs as the handler ends)."""
    for _ in range(500):  # bounded wait, not a timing assertion
        gw.gateway.access_log.flush()
        lines = access.getvalue().splitlines()
        if len(lines) >= count:
            doc: dict[str, Any] = orjson.loads(lines[count - 1])
            return doc
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access-log line {count}: {access.getvalue()!r}")


def events_of(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


def assert_clean(text: str, *forbidden: str) -> None:
    for word in (SECRET, "127.0.0.1", "http://", *forbidden):
        assert word not in text, (word, text)


# ---------------------------------------------------------------------------------------------
# 7. A 200 with no answer in it is a failed attempt, retried and fallen back like a 5xx
# ---------------------------------------------------------------------------------------------


async def drop_after_headers(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(SSE_HEAD if body.get("stream") else b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{")
    return False


async def comments_only(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(SSE_HEAD + chunked(b": processing\n\n", b"event: ping\n\n") + END)
    return True


async def json_body(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    payload = completion(body["model"])
    writer.write(response(200, payload) if not body.get("stream") else
                 SSE_HEAD.replace(b"text/event-stream", b"application/json") + chunked(payload) + END)
    return True


async def empty_body(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(response(200, b"", content_type="text/event-stream" if body.get("stream") else "application/json"))
    return True


async def only_done(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(SSE_HEAD + chunked(DONE) + END)
    return True


async def error_first(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(SSE_HEAD + chunked(event({"error": {"message": f"overloaded, key {SECRET}", "code": 503}}), DONE)
                 + END)
    return True


async def not_json(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(response(200, b"<html>gateway says hi</html>", content_type="text/html"))
    return True


STREAM_NO_ANSWER = {"drop": drop_after_headers, "comments": comments_only, "json": json_body, "empty": empty_body,
                    "only-done": only_done, "error-first": error_first}


@pytest.mark.parametrize("broken", sorted(STREAM_NO_ANSWER))
async def test_stream_200_without_an_answer_falls_back(
    make_gateway: GatewayFactory, scripted: Any, broken: str
) -> None:
    """Item 7: the deployment's 200 with no answer event is retried on the fallback, whose answer the client gets."""
    up = await scripted(STREAM_NO_ANSWER)
    gw, key, access = await start(make_gateway, up.url, {MODEL: [broken], BACKUP: ["good"]})
    client = gw.client(key)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert [b["model"] for b in up.seen] == [broken, "good"]
    line = await log_line(gw, access)
    assert line["status"] == 200 and line["fallback_from"] == MODEL


@pytest.mark.parametrize("broken", sorted(STREAM_NO_ANSWER))
async def test_stream_200_without_an_answer_anywhere_is_a_503_refunded(
    make_gateway: GatewayFactory, scripted: Any, broken: str
) -> None:
    """Item 7: every deployment answers 200 with nothing: a 503 JSON with Retry-After, not a 200 then a refund."""
    up = await scripted(STREAM_NO_ANSWER)
    gw, key, access = await start(make_gateway, up.url, {MODEL: [broken], BACKUP: [broken]})
    status, body, headers = await call(gw, key, stream=True)
    assert status == 503, body
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["code"] == "service_unavailable" and error["status"] == 503
    assert_clean(error["message"])
    assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert headers["X-Clex-Credits-Remaining"] == "2000"
    assert len(up.seen) == 2
    line = await log_line(gw, access)
    assert line["status"] == 503 and line["credits"] == 0 and line["refunded"] == 2


async def json_error(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
    writer.write(response(200, orjson.dumps({"error": {"message": "no capacity"}})))
    return True


UNARY_NO_ANSWER = {"drop": drop_after_headers, "json-error": json_error, "empty": empty_body, "not-json": not_json}


@pytest.mark.parametrize("broken", sorted(UNARY_NO_ANSWER))
async def test_unary_200_without_an_answer_falls_back(
    make_gateway: GatewayFactory, scripted: Any, broken: str
) -> None:
    """Item 7, non-streaming: a 200 whose body is cut, empty, not JSON or an error is retried on the fallback."""
    up = await scripted(UNARY_NO_ANSWER)
    gw, key, access = await start(make_gateway, up.url, {MODEL: [broken], BACKUP: ["good"]})
    answer = await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, stream=False)
    assert answer.choices[0].message.content == "Hi there"
    assert [b["model"] for b in up.seen] == [broken, "good"]
    line = await log_line(gw, access)
    assert line["status"] == 200 and line["fallback_from"] == MODEL


@pytest.mark.parametrize("broken", sorted(UNARY_NO_ANSWER))
async def test_unary_200_without_an_answer_anywhere_is_a_503(
    make_gateway: GatewayFactory, scripted: Any, broken: str
) -> None:
    """Item 7, non-streaming: when every deployment's 200 is empty, cut, not JSON or an error: SPEC's 503."""
    up = await scripted(UNARY_NO_ANSWER)
    gw, key, _ = await start(make_gateway, up.url, {MODEL: [broken], BACKUP: [broken]})
    status, body, headers = await call(gw, key, stream=False)
    assert status == 503, body
    assert orjson.loads(body)["error"]["code"] == "service_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-Clex-Credits-Remaining"] == "2000"


async def test_keepalive_already_sent_then_no_answer_ends_in_an_error_event(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 7: keep-alives go out while the first event is awaited; if the 200 is out and all fail, an error event."""
    seen_keepalive = asyncio.Event()

    async def slow_drop(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(SSE_HEAD)
        await writer.drain()
        await seen_keepalive.wait()  # the client has the 200 and a keep-alive comment by now
        return False

    up = await scripted({"slow-drop": slow_drop})
    gw, key, access = await start(make_gateway, up.url, {MODEL: ["slow-drop"], BACKUP: ["slow-drop"]},
                                  sse_keepalive_seconds=0.05)
    async with aiohttp.ClientSession() as session, session.post(
        gw.base_url + "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        assert first == b": keep-alive\n\n"
        seen_keepalive.set()
        body = await resp.read()
    events = [e for e in events_of(body) if e != b": keep-alive"]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][len(b"data: "):])["error"]
    assert error["code"] == "service_unavailable"
    line = await log_line(gw, access)
    assert line["credits"] == 0 and line["refunded"] == 2


# ---------------------------------------------------------------------------------------------
# 2. Upstream error text reaches a client scrubbed, naming the CLEX model
# ---------------------------------------------------------------------------------------------

LEAKY = (f"engine up-name-7b at http://10.1.2.3:8000/v1 failed (auth Bearer {SECRET}); "
         "retry on vllm-box:8000, api.internal:443 or [::1]:9000")


async def test_midstream_error_event_becomes_a_spec_error_event(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 2: an error event after the answer started is replaced by SPEC's, scrubbed; the content before it stays."""

    async def fails_midway(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(SSE_HEAD + chunked(token_chunk("up-name-7b", "Hi "))
                     + chunked(token_chunk("up-name-7b", "there") + event({"error": {"message": LEAKY, "code": 500}})
                               + token_chunk("up-name-7b", "never") + DONE) + END)
        return True

    up = await scripted({"up-name-7b": fails_midway})
    gw, key, access = await start(make_gateway, up.url, {MODEL: ["up-name-7b"], BACKUP: ["good"]})
    status, body, _ = await call(gw, key, stream=True)
    assert status == 200
    events = events_of(body)
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][len(b"data: "):])["error"]
    assert set(error) == {"message", "type", "code", "status"}
    assert error["status"] == 500 and error["code"] == "internal_server_error"
    assert_clean(error["message"], "10.1.2.3", "vllm-box", "api.internal", "[::1]", "up-name-7b", ":8000", ":443")
    assert MODEL in error["message"]
    assert b"never" not in body and b"Hi " in body and b"there" in body
    line = await log_line(gw, access)
    assert line["credits"] == 2 and "refunded" not in line  # the answer had started


async def test_rejected_request_message_is_scrubbed_and_names_the_clex_model(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 2: a provider's 400 message keeps its words but loses hosts, ports, credentials and its model name."""

    async def rejects(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(response(400, orjson.dumps({"error": {"message": f"model up-name-7b rejected: {LEAKY}"}})))
        return True

    up = await scripted({"up-name-7b": rejects})
    gw, key, _ = await start(make_gateway, up.url, {MODEL: ["up-name-7b"], BACKUP: ["good"]})
    for stream in (False, True):
        status, body, _ = await call(gw, key, stream=stream)
        assert status == 400
        message = orjson.loads(body)["error"]["message"]
        assert_clean(message, "10.1.2.3", "vllm-box", "api.internal", "[::1]", "up-name-7b", ":8000", ":443")
        assert f"model {MODEL} rejected" in message


# ---------------------------------------------------------------------------------------------
# 5 / 9. The upstream's Retry-After: any value is a 503 with a sane header; dates are honoured
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "low", "high"), [
    ("inf", 86_400, 86_400), ("1e308", 86_400, 86_400), ("999999999", 86_400, 86_400), ("nan", 1, 1),
    ("-30", 1, 1), ("soon", 1, 1), ("120", 120, 120),
    ("DATE+3600", 3000, 3600),  # an HTTP-date an hour ahead (a loaded machine may take a while to get here)
    ("DATE-3600", 1, 1),
])
async def test_upstream_retry_after_is_sanitized_capped_and_dates_honoured(
    make_gateway: GatewayFactory, scripted: Any, value: str, low: int, high: int
) -> None:
    """Items 5 and 9: `inf`/`1e308` gave a 500; a huge value passed uncapped; an HTTP-date was read as 1 s."""
    if value.startswith("DATE"):
        value = formatdate(time.time() + int(value[4:]), usegmt=True)

    async def overloaded(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(response(503, b'{"error": {"message": "busy"}}', f"Retry-After: {value}"))
        return True

    up = await scripted({"busy": overloaded})
    gw, key, _ = await start(make_gateway, up.url, {MODEL: ["busy"]}, fallback=None)
    for stream in (False, True):
        status, body, headers = await call(gw, key, stream=stream)
        assert status == 503, body
        assert orjson.loads(body)["error"]["code"] == "service_unavailable"
        assert low <= int(headers["Retry-After"]) <= high
        assert low * 1000 <= int(headers["retry-after-ms"]) <= high * 1000


# ---------------------------------------------------------------------------------------------
# 8. Content already received goes out before a malformed usage chunk ends the stream
# ---------------------------------------------------------------------------------------------


async def test_content_before_a_malformed_usage_chunk_is_relayed(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 8: the tokens that came in the same read as a broken usage chunk reach the client before the error."""

    async def bad_usage(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        model = body["model"]
        writer.write(SSE_HEAD + chunked(token_chunk(model, "Hi ") + token_chunk(model, "there")
                                        + b'data: {"choices": [], "usage": {"prompt_tokens": 3,\n\n' + DONE) + END)
        return True

    up = await scripted({"bad-usage": bad_usage})
    gw, key, _ = await start(make_gateway, up.url, {MODEL: ["bad-usage"]}, fallback=None)
    status, body, _ = await call(gw, key, stream=True)
    assert status == 200
    events = events_of(body)
    assert [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:2]] == ["Hi ", "there"]
    error = orjson.loads(events[2][6:])["error"]
    assert error["code"] == "internal_server_error" and "usage" in error["message"]
    assert events[3:] == [b"data: [DONE]"]


# ---------------------------------------------------------------------------------------------
# 15. A stream that delivered [DONE] is complete, whatever the upstream sends after it
# ---------------------------------------------------------------------------------------------


async def test_bytes_after_done_neither_reach_the_client_nor_make_a_499(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 15: LiteLLM's proxy sends more after `[DONE]`; here the upstream also never ends its body."""

    async def trailer(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(SSE_HEAD + chunked(good_stream(body["model"]) + b'data: {"trailer": 1}\n\n'))
        await writer.drain()
        writer.write(chunked(b'data: {"trailer": 2}\n\n'))
        await writer.drain()
        await up.closing.wait()  # never ends the chunked body
        return False

    up = await scripted({"trailer": trailer})
    gw, key, access = await start(make_gateway, up.url, {MODEL: ["trailer"]}, fallback=None)
    status, body, _ = await call(gw, key, stream=True)  # the client reads to the end, then closes its connection
    assert status == 200
    assert body.endswith(b"data: [DONE]\n\n") and b"trailer" not in body
    line = await log_line(gw, access)
    assert line["status"] == 200 and line["credits"] == 2 and "refunded" not in line

    stream = await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Hi there"
    assert (await log_line(gw, access, 2))["status"] == 200


# ---------------------------------------------------------------------------------------------
# 16. An unasked usage chunk that carries choices (LiteLLM's shape) loses its usage
# ---------------------------------------------------------------------------------------------


async def test_unasked_usage_with_choices_is_stripped_and_dropped_when_empty(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 16: `usage` never reaches a client that did not ask; a chunk left with nothing to say is dropped."""

    async def litellm(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        model = body["model"]
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model}
        writer.write(SSE_HEAD + chunked(
            token_chunk(model, "Hi "),
            event({**base, "choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": "stop"}],
                   "usage": usage}),
            event({**base, "choices": [{"index": 0, "delta": {}}], "usage": usage}),
            DONE) + END)
        return True

    up = await scripted({"litellm": litellm})
    gw, key, access = await start(make_gateway, up.url, {MODEL: ["litellm"]}, fallback=None)
    stream = await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert [c.choices[0].delta.content for c in chunks] == ["Hi ", "there"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    line = await log_line(gw, access)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3, 2)

    asked = await gw.client(key).chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True})
    usages = [c.usage for c in [chunk async for chunk in asked] if getattr(c, "usage", None)]
    assert len(usages) == 2  # a client that asked gets the upstream's chunks as they are


# ---------------------------------------------------------------------------------------------
# 17. The CLEX model id in every answer; attempts per call capped
# ---------------------------------------------------------------------------------------------


async def test_response_model_is_the_clex_id_when_the_upstream_name_differs(
    make_gateway: GatewayFactory, upstream: DemoServer
) -> None:
    """Item 17: the demo upstream echoes the name it was asked for; the client sees the catalog id everywhere."""
    gw, key, _ = await start(make_gateway, upstream.url,
                             {MODEL: ["upstream-name-7b"], BACKUP: ["upstream-backup"]}, pass_headers=True)
    client = gw.client(key)
    whole = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=False)
    assert whole.model == MODEL and whole.choices[0].message.content
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 3 and {c.model for c in chunks} == {MODEL}
    assert chunks[-1].usage is not None
    # Served by the fallback: the fallback's catalog id.
    fell = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=False,
        extra_headers={"x-demo-status": "503", "x-demo-fail-times": "1", "x-demo-fail-key": "rename"})
    assert fell.model == BACKUP
    assert [r.body["model"] for r in upstream.recorder.requests] == [
        "upstream-name-7b", "upstream-name-7b", "upstream-name-7b", "upstream-backup"]


@pytest.mark.parametrize(("cap", "expected"), [(6, ["d0", "d1", "d2", "d3", "d0", "fb"]), (1, ["d0"]),
                                                (2, ["d0", "fb"])])
async def test_upstream_attempts_per_call_are_capped(
    make_gateway: GatewayFactory, upstream: DemoServer, cap: int,
    expected: list[str],
) -> None:
    """Item 17: four deployments, two retries each and a fallback were 13 attempts; the cap bounds them."""
    models = {MODEL: ["d0", "d1", "d2", "d3"], BACKUP: ["fb"]}
    gw, key, _ = await start(make_gateway, upstream.url, models, pass_headers=True,
                             upstream_retries=2, upstream_max_attempts=cap, upstream_retry_backoff=0.001)
    status, body, _ = await call(gw, key, stream=False, **{"x-demo-status": "500"})
    assert status == 500, body
    assert [r.body["model"] for r in upstream.recorder.requests] == expected


async def test_openai_client_sees_a_clean_error_for_a_midstream_failure(
    make_gateway: GatewayFactory, scripted: Any
) -> None:
    """Item 2, the client's view: the official client raises with SPEC's message, not the provider's bytes."""

    async def fails_midway(writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        writer.write(SSE_HEAD + chunked(token_chunk("up-name-7b", "Hi "),
                                        event({"error": {"message": LEAKY, "code": 503}})) + END)
        return True

    up = await scripted({"up-name-7b": fails_midway})
    gw, key, _ = await start(make_gateway, up.url, {MODEL: ["up-name-7b"]}, fallback=None)
    stream = await gw.client(key).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert_clean(str(info.value), "10.1.2.3", "vllm-box", "api.internal", "[::1]", "up-name-7b")
    assert MODEL in str(info.value)
