"""Operations, as an operator meets them: `clexproxy serve` and the CLI as real processes on free loopback ports.

Issue 10, items 10 (one gateway per port), 11 (SIGTERM ends streams as SPEC says, within the
configured grace), 13 (a data dir the store cannot use is one line naming it and the fix) and
20 (a quiet normal start, a warning for a missing provider credential, a `--help` that says
what every option does and which variables have no flag).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from clexproxy.cli import build_parser
from tests.integration.test_serve import KEY_RE, REPO, clean_env, free_port
from tests.redis_server import RedisServer

START_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0  # a process that should exit and does not is failed after this, never timed otherwise
LARGE = "meta/llama-3.3-70b-instruct"


@dataclass
class Proc:
    """One `clexproxy ...` process; stdout and stderr go to one file, read as it grows."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = START_TIMEOUT) -> bool:
        """True once `needle` is in the output; False if the process exited (or `timeout` passed) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            if self.proc.poll() is not None:
                return needle in self.output()
            time.sleep(0.05)
        return False

    def exit_code(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s:\n{self.output()[-3000:]}")

    def key(self) -> str:
        match = KEY_RE.search(self.output())
        assert match, self.output()
        return match.group(1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    started: list[Proc] = []

    def launcher(name: str, *args: str, env: dict[str, str] | None = None, **popen: object) -> Proc:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, "-m", "clexproxy", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**clean_env(), **(env or {})}, cwd=REPO, **popen,
        )
        started.append(Proc(proc, log))
        return started[-1]

    try:
        yield launcher
    finally:
        for proc in started:
            proc.stop()


class Launcher(Protocol):
    def __call__(self, name: str, *args: str, env: dict[str, str] | None = None, **popen: object) -> Proc: ...


def get(url: str, key: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_serving(proc: Proc, port: int, workers: int = 1) -> None:
    """Until /readyz answers 200 on `port` and, for a group, every worker reports in the merged metrics."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            pytest.fail(f"the gateway exited:\n{proc.output()[-3000:]}")
        try:
            ready = get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
            if ready and (workers == 1 or f"clexproxy_workers {float(workers)}" in
                          get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1]):
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not serving on {port} within {START_TIMEOUT} s:\n{proc.output()[-3000:]}")


def chat(port: int, key: str) -> int:
    """One non-streaming call on a new connection (so a port shared by several groups would be split)."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "stream": false}' % LARGE.encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def port_error(port: int) -> str:
    return f"clexproxy: cannot listen on 127.0.0.1:{port}: Address already in use"


def group_args(port: int, data: Path, redis: RedisServer, *extra: str) -> list[str]:
    return ["serve", "--demo", "--port", str(port), "--workers", "2", "--redis", redis.url, "--data-dir", str(data),
            *extra]


def listener(port: int = 0) -> socket.socket:
    """A plain listening socket, as any other program holding a port would (no SO_REUSEPORT)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


# -- 10: one gateway per port ----------------------------------------------------------------------


def test_a_second_worker_group_on_a_taken_port_exits_with_the_port_error(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: the second `serve --workers 2` used to start and take part of the first one's calls (401s)."""
    port = free_port()
    first = launch("first", *group_args(port, tmp_path / "a", redis_server))
    wait_serving(first, port, workers=2)
    key = first.key()

    second = launch("second", *group_args(port, tmp_path / "b", redis_server))
    assert second.exit_code() == 1, second.output()
    assert port_error(port) in second.output()
    assert "Traceback" not in second.output()

    statuses = [chat(port, key) for _ in range(30)]  # new connections: a shared port would split them
    assert statuses == [200] * 30
    assert first.proc.poll() is None


def test_a_single_gateway_and_a_worker_group_never_share_a_port(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: a group on a single gateway's port used to respawn its workers forever without saying why."""
    port = free_port()
    single = launch("single", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "a"))
    wait_serving(single, port)
    group = launch("group", *group_args(port, tmp_path / "b", redis_server))
    assert group.exit_code() == 1, group.output()
    assert port_error(port) in group.output()
    assert "Traceback" not in group.output() and "died at once" not in group.output()
    assert single.stop() == 0

    port = free_port()
    group = launch("group-first", *group_args(port, tmp_path / "c", redis_server))
    wait_serving(group, port, workers=2)
    single = launch("single-second", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert single.exit_code() == 1, single.output()
    assert port_error(port) in single.output()
    assert "Traceback" not in single.output()


def test_a_taken_metrics_port_stops_a_worker_group_with_the_port_error(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: the metrics port is claimed like the main one (workers used to die on it and be respawned)."""
    with listener() as held:
        metrics_port = held.getsockname()[1]
        group = launch("group", *group_args(free_port(), tmp_path / "a", redis_server,
                                            "--metrics-port", str(metrics_port)))
        assert group.exit_code() == 1, group.output()
    assert port_error(metrics_port) in group.output()
    assert "Traceback" not in group.output()


def test_a_worker_that_cannot_listen_stops_the_supervisor(tmp_path: Path, redis_server: RedisServer) -> None:
    """Item 10: a worker's bind failure (the port taken after the parent's claim) ends the group with one line.

    The supervisor alone, without the parent's claim, on a port another program holds: before the
    fix its workers died at once and were replaced forever.
    """
    with listener() as held:
        port = held.getsockname()[1]
        script = textwrap.dedent(f"""
            import dataclasses, sys
            from clexproxy.observability.logsetup import configure_logging
            from clexproxy.config import load_settings
            from clexproxy.server.supervisor import Supervisor, worker_settings
            from clexproxy.server.worker import run_worker
            configure_logging("INFO", "text")
            settings = load_settings(None, env={{}}, overrides={{
                "demo": True, "port": {port}, "workers": 2, "redis_url": {redis_server.url!r},
                "data_dir": {str(tmp_path / "data")!r}}})
            sys.exit(Supervisor(worker_settings(settings), "banner", target=run_worker).run())
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(),
                              cwd=REPO, timeout=EXIT_TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert port_error(port) in done.stderr and done.stderr.count("cannot listen") == 1, done.stderr
    assert "died at once" not in done.stdout + done.stderr


# -- 11: SIGTERM ends what is still running as SPEC says, within the configured grace -------------------


def _post(key: str, request_id: str, body: dict[str, object], **knobs: str) -> bytes:
    data = json.dumps({"model": LARGE, "messages": [{"role": "user", "content": "Hi"}], **body}).encode()
    head = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}",
            "Content-Type: application/json", f"X-Request-Id: {request_id}", f"Content-Length: {len(data)}",
            *(f"x-demo-{name.replace('_', '-')}: {value}" for name, value in knobs.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


@dataclass
class Answer:
    status: int
    headers: str
    body: bytes
    terminated: bool  # chunked: the zero-length last chunk arrived


def _parse(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.decode("latin-1")
    if "transfer-encoding: chunked" not in headers.lower():
        return Answer(status, headers, rest, False)
    body, terminated = b"", False
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            terminated = rest == b"\r\n"
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return Answer(status, headers, body, terminated)


async def _open(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def _until(reader: asyncio.StreamReader, needle: bytes, count: int = 1) -> bytes:
    """Read until `needle` was seen `count` times (the stream has started); what was read."""
    got = b""
    while got.count(needle) < count:
        chunk = await asyncio.wait_for(reader.read(65536), START_TIMEOUT)
        assert chunk, got
        got += chunk
    return got


async def _rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, got: bytes = b"") -> bytes:
    """Everything until the gateway closes the connection (it closes each one after its answer once stopping)."""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), EXIT_TIMEOUT):
            got += chunk
    finally:
        writer.close()
    return got


def _events(body: bytes) -> list[str]:
    return [event for event in body.decode().split("\n\n") if event.strip()]


def _access_line(output: str, request_id: str) -> str:
    lines = [line for line in output.splitlines() if f"request_id={request_id} " in line and "endpoint=" in line]
    assert len(lines) == 1, output[-4000:]
    return lines[0]


CUT_EVENT = ('data: {"error":{"message":"The gateway is shutting down; retry the request.",'
             '"type":"service_unavailable_error","code":"service_unavailable","status":503}}')


async def test_sigterm_drains_for_the_grace_then_ends_streams_with_an_error_event(
    launch: Launcher, tmp_path: Path
) -> None:
    """Item 11: streams cut by the shutdown end with SPEC's error event, [DONE] and the chunked terminator.

    Before: no error event, no [DONE], no terminator, logged as client disconnects (499), and a
    drain of about twice the documented grace (the configured one was not read at all).
    """
    grace = 3.0
    port = free_port()
    proc = launch("gateway", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                  env={"CLEX_SHUTDOWN_GRACE_SECONDS": str(grace)})
    await asyncio.to_thread(wait_serving, proc, port)
    key = proc.key()

    # A stream far longer than the grace, one that ends within it, a call whose upstream has not answered.
    long_r, long_w = await _open(port, _post(key, "cut-stream", {}, tokens="600", delay_ms="100"))
    long_got = await _until(long_r, b"data: ", 2)
    short_r, short_w = await _open(port, _post(key, "short-stream", {}, tokens="10", delay_ms="100"))
    short_got = await _until(short_r, b"data: ", 1)
    unary_r, unary_w = await _open(port, _post(key, "cut-unary", {"stream": False}, headers_delay_ms="60000"))
    idle_r, idle_w = await _open(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await _until(idle_r, b'{"status":"ok"}')).startswith(b"HTTP/1.1 200")
    long_task = asyncio.create_task(_rest(long_r, long_w, long_got))

    signalled = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    # At once: the idle keep-alive connection is closed and new connections are refused, while the long
    # stream still runs (it runs for the whole grace).
    assert await asyncio.wait_for(idle_r.read(), EXIT_TIMEOUT) == b""
    idle_w.close()
    for _ in range(200):
        try:
            _, probe = await asyncio.open_connection("127.0.0.1", port)
            probe.close()
            await asyncio.sleep(0.01)
        except ConnectionRefusedError:
            break
    else:
        pytest.fail("the gateway still accepts connections after SIGTERM")
    assert not long_task.done()

    short = _parse(await _rest(short_r, short_w, short_got))
    assert short.status == 200 and short.terminated
    assert _events(short.body)[-1] == "data: [DONE]" and b'"error"' not in short.body

    cut = _parse(await long_task)
    assert cut.status == 200 and cut.terminated, cut
    events = _events(cut.body)
    assert events[-2:] == [CUT_EVENT, "data: [DONE]"], events[-3:]
    assert len(events) > 4 and all('"chat.completion.chunk"' in e for e in events[:-2])

    unary = _parse(await _rest(unary_r, unary_w))
    assert unary.status == 503, unary
    assert json.loads(unary.body)["error"]["code"] == "service_unavailable"
    assert "Retry-After: 1" in unary.headers and "X-Clex-Credits-Remaining" in unary.headers

    assert await asyncio.to_thread(proc.exit_code) == 0
    elapsed = time.monotonic() - signalled
    assert elapsed < grace + 8.0, f"exited {elapsed:.1f} s after SIGTERM with a grace of {grace} s"
    output = proc.output()
    for request_id in ("cut-stream", "cut-unary"):
        line = _access_line(output, request_id)
        assert " status=503 " in line and " error=shutdown" in line and "client_disconnected" not in line, line
    assert " status=200 " in _access_line(output, "short-stream")
    assert "refunded=3" in _access_line(output, "cut-unary")  # no answer started: nothing charged


async def test_sigterm_under_workers_cuts_streams_within_the_grace(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 11: with --workers the parent waits the configured grace plus its margin, not a fixed 15 s then SIGKILL."""
    port = free_port()
    proc = launch("group", *group_args(port, tmp_path / "data", redis_server),
                  env={"CLEX_SHUTDOWN_GRACE_SECONDS": "1"})
    await asyncio.to_thread(wait_serving, proc, port, 2)
    key = proc.key()
    streams = [await _open(port, _post(key, f"w-{i}", {}, tokens="600", delay_ms="100")) for i in range(4)]
    started = [await _until(reader, b"data: ", 2) for reader, _ in streams]
    signalled = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    answers = [_parse(await _rest(r, w, got)) for (r, w), got in zip(streams, started, strict=True)]
    assert await asyncio.to_thread(proc.exit_code) == 0
    assert time.monotonic() - signalled < 1.0 + 8.0
    output = proc.output()
    for i, answer in enumerate(answers):
        assert answer.terminated and _events(answer.body)[-2:] == [CUT_EVENT, "data: [DONE]"], answer
        line = _access_line(output, f"w-{i}")
        assert " status=503 " in line and " error=shutdown" in line, line
    assert "killing it" not in output


# -- 13: a data dir the store cannot use ------------------------------------------------------------


def one_line_error(proc: Proc | subprocess.CompletedProcess[str], path: Path) -> str:
    text = proc.output() if isinstance(proc, Proc) else proc.stdout + proc.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith("clexproxy: ")]
    assert len(errors) == 1, text
    assert str(path) in errors[0] and "--data-dir" in errors[0], text
    return errors[0]


def run_cli(*args: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clexproxy", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=REPO, timeout=EXIT_TIMEOUT,
                          preexec_fn=_without_root_overrides if as_user else None)


def test_a_data_dir_that_is_a_file_is_one_line_naming_it(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 13: `serve`, a worker group's parent and the CLI each say what is wrong and how to fix it."""
    data = tmp_path / "data"
    data.write_text("not a directory\n")
    for name, args in [
        ("demo", ["serve", "--demo", "--port", str(free_port()), "--data-dir", str(data)]),
        ("plain", ["serve", "--port", str(free_port()), "--data-dir", str(data)]),
        ("group", group_args(free_port(), data, redis_server)),
    ]:
        proc = launch(name, *args)
        assert proc.exit_code() == 2, proc.output()
        assert "not a directory" in one_line_error(proc, data)
    for args in (["keys", "list"], ["keys", "create", "--account", "a"], ["accounts", "list"]):
        done = run_cli(*args, "--data-dir", str(data))
        assert done.returncode == 2, done.stderr
        one_line_error(done, data)
    assert data.read_text() == "not a directory\n"


def _without_root_overrides() -> None:
    """Root writes through any mode bits (CAP_DAC_OVERRIDE): drop that from the process about to exec, as a user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, off the bounding set
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP = 24


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only data dir holding a store (made before it turned read-only)."""
    data = tmp_path / "data"
    assert run_cli("keys", "create", "--account", "a", "--data-dir", str(data)).returncode == 0
    for child in data.iterdir():
        child.chmod(0o444)
    data.chmod(0o555)
    try:
        yield data
    finally:
        data.chmod(0o755)


def test_a_read_only_data_dir_is_one_line_naming_it(launch: Launcher, read_only_dir: Path) -> None:
    """Item 13: a read-only data dir (store inside it, or not) is refused before anything starts."""
    data = read_only_dir
    for args in (["serve", "--demo", "--port", str(free_port())], ["serve", "--port", str(free_port())]):
        proc = launch(args[1], *args, "--data-dir", str(data), preexec_fn=_without_root_overrides)
        assert proc.exit_code() == 2, proc.output()
        assert "not writable" in one_line_error(proc, data)
    done = run_cli("keys", "create", "--account", "b", "--data-dir", str(data), as_user=True)
    assert done.returncode == 2, done.stderr
    one_line_error(done, data)
    fresh = data / "inside"
    done = run_cli("keys", "list", "--data-dir", str(fresh), as_user=True)
    assert done.returncode == 2, done.stderr
    assert "cannot create" in one_line_error(done, fresh)


def test_keys_create_with_an_unknown_plan_leaves_no_database(tmp_path: Path) -> None:
    """Item 13: the plan is checked before the store is opened (it used to create the database first)."""
    data = tmp_path / "data"
    done = run_cli("keys", "create", "--account", "a", "--plan", "gold", "--data-dir", str(data))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["clexproxy: unknown plan 'gold'; choose one of: free, starter, pro"]
    assert not (data / "clexproxy.sqlite3").exists()
    done = run_cli("accounts", "set-plan", "a", "gold", "--data-dir", str(data))
    assert done.returncode == 2 and "unknown plan 'gold'" in done.stderr
    assert not (data / "clexproxy.sqlite3").exists()


# -- 20: papercuts ----------------------------------------------------------------------------------


def _low_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))  # caps upstream connections at 2,016


def test_a_normal_start_prints_no_warning(launch: Launcher, tmp_path: Path) -> None:
    """Item 20: the connection cap the open-file limit imposes is information (INFO), not a WARNING."""
    port = free_port()
    proc = launch("demo", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                  preexec_fn=_low_open_file_limit)
    wait_serving(proc, port)
    assert proc.stop() == 0
    text = proc.output()
    cap = [line for line in text.splitlines() if "upstream connections capped at 2016" in line]
    assert len(cap) == 1 and " INFO " in cap[0], text
    assert " WARNING " not in text and " ERROR " not in text, text


def test_an_unset_provider_credential_is_a_warning_naming_the_variable(launch: Launcher, tmp_path: Path) -> None:
    """Item 20: once per provider that serves catalog models; not when it is set, never with --demo."""
    port = free_port()
    unset = launch("unset", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    wait_serving(unset, port)
    assert unset.stop() == 0
    warnings = [line for line in unset.output().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, unset.output()
    assert "NVIDIA_API_KEY is not set" in warnings[0] and "'nvidia'" in warnings[0]

    port = free_port()
    credential = "nvapi-" + "s3cret" * 4
    given = launch("set", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                   env={"NVIDIA_API_KEY": credential})
    wait_serving(given, port)
    assert given.stop() == 0
    assert " WARNING " not in given.output() and credential not in given.output()


def _options(parser: argparse.ArgumentParser, path: str = "clexproxy") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_says_what_it_does_and_its_default() -> None:
    """Item 20: no bare option in any subcommand's --help; a flag's help names its default or choices."""
    seen = 0
    for path, action in _options(build_parser()):
        where = f"{path} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and len(action.help) > 10, where
        if action.option_strings and not isinstance(action, argparse._VersionAction):
            assert "default" in action.help or action.required or action.choices, where
        seen += 1
    assert seen > 30


def test_serve_help_names_the_variables_without_a_flag() -> None:
    """Item 20: CLEX_ADMIN_TOKEN had no flag and no mention; the CLEX_<SETTING> rule is spelled out."""
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert "CLEX_ADMIN_TOKEN" in text and "CLEX_<SETTING>" in text and "CLEX_SHUTDOWN_GRACE_SECONDS" in text
    assert "NVIDIA_API_KEY" in text
    assert re.search(r"--log-level \{DEBUG,INFO,WARNING,ERROR\}", text)
    assert "default 8080" in text and "default 127.0.0.1" in text
