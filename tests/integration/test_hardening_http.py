"""The HTTP layer under hostile or careless clients (issue 10, items 1, 6 and 12; clexproxy/server/connections.py).

Raw sockets, because the point is bytes no HTTP client library would send: a key with a control
character, a header past aiohttp's 8,190-byte limit, a head sent halfway, more connections than
the gateway takes. Every refusal must be SPEC's JSON with an X-Request-Id, echo nothing of the
request, and be logged as one line without it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from clexproxy.config import Settings
from clexproxy.server.connections import ClientServer
from clexproxy.server.fdlimit import RESERVE, TURN_AWAY_RESERVE, client_connection_cap, upstream_connection_cap

from .conftest import GatewayFactory, RunningGateway
from .test_serve import REPO, START_TIMEOUT, Served, clean_env, free_port

CHEAP = "meta/llama-3.1-8b-instruct"
BODY = orjson.dumps({"model": CHEAP, "messages": [{"role": "user", "content": "Hello!"}], "stream": False})
MARK = "echo-canary-7f3a"  # in every refused request: it must come back in no answer and no log line

Answer = tuple[int, dict[str, str], bytes]


async def connect(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bytes]:
    """One answer with a Content-Length body, and its bytes as they came off the socket."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return (int(lines[0].split()[1]), headers, body), head + body


async def closed(reader: asyncio.StreamReader) -> bool:
    """The gateway closed the connection (an orderly end, not a reset) within 10 s."""
    return await asyncio.wait_for(reader.read(1), 10) == b""


async def answered_and_closed(gw: RunningGateway, data: bytes) -> tuple[Answer, bytes]:
    """Send `data` on a new connection: the one answer it gets, after which the gateway closes the connection."""
    reader, writer = await connect(gw)
    try:
        writer.write(data)
        answer, raw = await read_answer(reader)
        assert await closed(reader)
    finally:
        writer.close()
    return answer, raw


def request(key: str, *, line: str = "POST /v1/chat/completions HTTP/1.1", extra: str = "",
            body: bytes = BODY, length: int | None = None) -> bytes:
    head = (f"{line}\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def assert_spec_error(answer: Answer, status: int) -> dict[str, object]:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"].startswith("application/json"), headers
    assert headers.get("x-request-id"), headers
    error = orjson.loads(body)["error"]
    assert set(error) >= {"message", "type", "code", "status"} and error["status"] == status, error
    return error  # type: ignore[no-any-return]


def log_lines(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, tracebacks included, as a log file would hold it."""
    return caplog.text + "".join(str(r.exc_info) + str(r.args) for r in caplog.records)


# --- item 1: a malformed Authorization line is never echoed nor logged ---------------------------------------

@pytest.mark.parametrize(("name", "tail", "status"), [
    ("control character", "\x01x", 400),
    ("NUL", "\x00", 400),
    ("past 8,190 bytes", "k" * 8_200, 431),
])
async def test_malformed_authorization_is_refused_without_echoing_or_logging_the_key(
    gw: RunningGateway, key: str, caplog: pytest.LogCaptureFixture, name: str, tail: str, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, raw = await answered_and_closed(gw, request(key + tail))
    assert_spec_error(answer, status)
    assert answer[1]["connection"].lower() == "close"
    assert key.encode() not in raw and b"Bearer" not in raw and b"clex_" not in raw
    logged = log_lines(caplog)
    assert key not in logged and "clex_" not in logged and "Bearer" not in logged, logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], logged
    lines = [r for r in caplog.records if answer[1]["x-request-id"] in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno in (logging.INFO, logging.WARNING) and lines[0].exc_info is None
    assert str(status) in lines[0].getMessage()
    reader, writer = await connect(gw)  # and the key, sent well, still works
    try:
        writer.write(request(key))
        (status, _, _), _ = await read_answer(reader)
    finally:
        writer.close()
    assert status == 200


# --- item 6: aiohttp's text answers for requests over its limits are SPEC's JSON ------------------------------

LIMIT_CASES = {
    "129 headers": (dict(extra="".join(f"X-H{i}: {MARK}\r\n" for i in range(129))), 431),
    "a header over 8,190 bytes": (dict(extra=f"X-Note: {MARK}{'n' * 8_200}\r\n"), 431),
    "a request line over 8,190 bytes": (dict(line=f"POST /v1/chat/completions?{MARK}{'q' * 8_200} HTTP/1.1"), 400),
    "a Content-Length overflow": (dict(extra=f"X-Note: {MARK}\r\n", length=10**30), 413),
    "Content-Encoding: br": (dict(extra=f"Content-Encoding: br\r\nX-Note: {MARK}\r\n"), 400),
}


@pytest.mark.parametrize("case", list(LIMIT_CASES))
async def test_requests_over_the_parsers_limits_get_spec_json(
    gw: RunningGateway, key: str, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    kwargs, status = LIMIT_CASES[case]
    answer, raw = await answered_and_closed(gw, request(key, **kwargs))  # type: ignore[arg-type]
    assert_spec_error(answer, status)
    assert answer[1]["connection"].lower() == "close"
    assert MARK.encode() not in raw and key.encode() not in raw
    logged = log_lines(caplog)
    assert MARK not in logged and key not in logged and "Traceback" not in logged, logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], logged


async def test_a_path_with_an_encoded_newline_gets_a_json_404(gw: RunningGateway, key: str) -> None:
    """No route matches a decoded newline: aiohttp's router answered a text/plain 404."""
    reader, writer = await connect(gw)
    try:
        writer.write(request(key, line="POST /v1/chat%0Acompletions HTTP/1.1", extra="X-Request-Id: nl-1\r\n"))
        answer, raw = await read_answer(reader)
    finally:
        writer.close()
    error = assert_spec_error(answer, 404)
    assert error["code"] == "not_found" and answer[1]["x-request-id"] == "nl-1"  # a well-formed request: its id
    assert b"chat\ncompletions" not in raw and b"%0A" not in raw


async def test_a_transfer_coding_other_than_chunked_gets_a_501(gw: RunningGateway, key: str) -> None:
    """`gzip, chunked` was read as plain chunked, the gzip coding ignored: the call went through."""
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    answers = []
    for coding in ("gzip, chunked", "chunked"):
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nTransfer-Encoding: {coding}\r\n\r\n")
        reader, writer = await connect(gw)
        try:
            writer.write(head.encode() + chunked)
            answers.append((await read_answer(reader))[0])
            if coding != "chunked":
                assert await closed(reader)
        finally:
            writer.close()
    refused, served = answers
    error = assert_spec_error(refused, 501)
    assert error["code"] == "not_implemented" and refused[1]["connection"].lower() == "close"
    assert served[0] == 200, served  # chunked alone is read as ever


# --- item 12: idle and half-sent requests do not live forever; a cap answers 503 ------------------------------

async def test_defaults_close_idle_connections_after_75_seconds(gw: RunningGateway) -> None:
    assert Settings().client.keepalive_timeout == 75.0
    assert Settings().client.header_timeout == 30.0 and Settings().client.body_timeout == 30.0
    reader, writer = await connect(gw)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_answer(reader)
        (connection,) = gw.runner.server.connections  # type: ignore[union-attr]
        assert connection.keepalive_timeout == 75.0  # aiohttp's own default, with AppRunner: 3,630 s
    finally:
        writer.close()


async def test_an_idle_keepalive_connection_is_closed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(client_keepalive_timeout=0.3)
    silent_reader, silent_writer = await connect(gw)  # one that never sends a byte
    reader, writer = await connect(gw)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        (status, _, _), _ = await read_answer(reader)
        assert status == 200
        assert await closed(reader)
        assert await closed(silent_reader)
    finally:
        writer.close()
        silent_writer.close()


async def test_a_half_sent_head_gets_a_408_and_an_idle_connection_does_not(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(client_header_timeout=0.3, client_keepalive_timeout=60)
    key = await gw.add_key("slow")
    whole = request(key)
    idle_reader, idle_writer = await connect(gw)
    early_reader, early_writer = await connect(gw)
    reader, writer = await connect(gw)
    try:
        # A call answered (401) before its body came: aiohttp reads the body's rest after the answer.
        early = request("clex_" + "x" * 40)
        early_writer.write(early[:-10])
        (status, _, _), _ = await read_answer(early_reader)
        assert status == 401
        early_writer.write(early[-10:])
        # A call whose body comes in two reads: bytes that arrive while a call reads its body are
        # that body, so once answered the connection is idle, not halfway through a head.
        idle_writer.write(whole[:-10])
        await idle_writer.drain()
        await asyncio.sleep(0.05)
        idle_writer.write(whole[-10:])
        (status, _, _), _ = await read_answer(idle_reader)
        assert status == 200
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Note: {MARK}\r\n".encode())
        answer, raw = await read_answer(reader)
        assert await closed(reader)
        assert_spec_error(answer, 408)
        assert answer[1]["connection"].lower() == "close" and MARK.encode() not in raw
        await asyncio.sleep(1.0)  # more header timeouts of idling
        idle_writer.write(whole)  # the idle connections still serve
        (status, _, _), _ = await read_answer(idle_reader)
        assert status == 200
        early_writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        (status, _, _), _ = await read_answer(early_reader)
        assert status == 200
    finally:
        writer.close()
        idle_writer.close()
        early_writer.close()
    assert MARK not in log_lines(caplog)
    assert [r for r in caplog.records if "408" in r.getMessage() and r.levelno == logging.INFO]


async def test_a_body_that_stops_arriving_gets_a_408(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(client_body_timeout=0.3)
    key = await gw.add_key("stall")
    raw = request(key, extra="X-Request-Id: stalled-1\r\n")
    reader, writer = await connect(gw)
    try:
        writer.write(raw[:-20])  # the head and most of the body; the rest never comes
        answer, _ = await read_answer(reader)
        assert await closed(reader)
    finally:
        writer.close()
    assert_spec_error(answer, 408)
    assert answer[1]["x-request-id"] == "stalled-1"
    assert answer[1]["x-clex-credits-remaining"] == "2000"  # nothing charged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], log_lines(caplog)


async def test_connections_over_the_cap_get_a_503_and_an_orderly_close(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(client_max_connections=3)
    server = gw.runner.server
    assert isinstance(server, ClientServer) and server.limits.max_connections == 3
    held = [await connect(gw) for _ in range(3)]
    try:
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            (status, _, _), _ = await read_answer(reader)
            assert status == 200
        for _ in range(2):
            reader, writer = await connect(gw)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: over\r\n\r\n")
                answer, _ = await read_answer(reader)
                assert await closed(reader)  # an end of stream, not a reset
            finally:
                writer.close()
            error = assert_spec_error(answer, 503)
            assert error["code"] == "service_unavailable"
            assert int(answer[1]["retry-after"]) >= 1 and answer[1]["connection"].lower() == "close"
        held.pop()[1].close()
        for _ in range(100):  # until the gateway has seen the close
            if len(server.connections) < 3:
                break
            await asyncio.sleep(0.05)
        reader, writer = await connect(gw)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            (status, _, _), _ = await read_answer(reader)
        finally:
            writer.close()
        assert status == 200
    finally:
        for _, writer in held:
            writer.close()
    assert server.turned_away == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cap" in r.getMessage()]
    assert len(warnings) == 1, log_lines(caplog)  # one line, not one per connection


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


async def _probe(port: int, held: list[asyncio.StreamWriter]) -> str:
    """What one more client gets: its status line, or how the connection failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect failed: {type(exc).__name__}"
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    except asyncio.IncompleteReadError:
        writer.close()
        return "closed without an answer"
    except ConnectionResetError:
        writer.close()
        return "reset"
    status = head.split(b"\r\n")[0].decode()
    if " 200 " in status:
        held.append(writer)  # a served client stays connected
    else:
        writer.close()
    return status


async def test_more_clients_than_file_descriptors_get_503s_not_resets(tmp_path: Path) -> None:
    """`serve` with 256 file descriptors and 300 clients at once: uvloop closed 190 of them unanswered."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clexproxy", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=REPO,
        preexec_fn=_low_file_limit,
    )
    served = Served(proc, port)
    held: list[asyncio.StreamWriter] = []
    try:
        assert await asyncio.to_thread(served.banner_seen.wait, START_TIMEOUT) and served.curl_line, served.output()
        outcomes = Counter(await asyncio.gather(*(_probe(port, held) for _ in range(300))))
        served_now = outcomes.pop("HTTP/1.1 200 OK", 0)
        turned_away = outcomes.pop("HTTP/1.1 503 Service Unavailable", 0)
        assert not outcomes, (outcomes, served.output())  # every client got an answer
        assert served_now >= 1 and turned_away >= 1
        for writer in held:
            writer.close()
        held.clear()
        await asyncio.sleep(0.5)
        assert await _probe(port, held) == "HTTP/1.1 200 OK"
    finally:
        for writer in held:
            writer.close()
        served.terminate()
        served.kill()
    assert "Traceback" not in served.output(), served.output()



def test_the_default_cap_leaves_room_for_upstream_sockets_and_turning_away() -> None:
    assert client_connection_cap(0, 20_000) == (20_000 - RESERVE) // 2 - TURN_AWAY_RESERVE
    assert client_connection_cap(0, 20_000) + upstream_connection_cap(16384, 20_000) + RESERVE + TURN_AWAY_RESERVE \
        <= 20_000
    assert client_connection_cap(500, 20_000) == 500  # a configured cap is taken as it is
    assert client_connection_cap(0, 100) == 1  # never zero
