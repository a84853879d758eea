"""The real command: `python -m clexproxy serve --demo` as a subprocess, driven the way its banner tells users to.

SPEC: one command starts a working gateway with no provider keys and no network, and prints a ready-to-paste
curl line with a demo key. The server binds 127.0.0.1 on a free port; `--demo` routes every model (the fallback
included) to the in-process demo upstream, so nothing leaves loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from clexproxy.clock import utc_day
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LARGE = "meta/llama-3.3-70b-instruct"  # 3 credits
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]
KEY_RE = re.compile(r"Bearer (clex_[A-Za-z0-9_-]{32,})'")
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy"}


def clean_env() -> dict[str, str]:
    """No CLEX_* setting from the developer's shell (CLEX_CONFIG above all), no proxy in front of loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEX_") and k.lower() not in PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Served:
    """One `clexproxy serve --demo` process; its output is drained by a thread so it can never block on a pipe."""

    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    banner_seen: threading.Event = field(default_factory=threading.Event)
    eof: threading.Event = field(default_factory=threading.Event)
    curl_line: str = ""

    def __post_init__(self) -> None:
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
            if line.startswith("curl ") and not self.curl_line:
                self.curl_line = line
                self.banner_seen.set()
        self.eof.set()
        self.banner_seen.set()
        with self.changed:
            self.changed.notify_all()

    def wait_line(self, prefix: str, timeout: float = 10.0) -> str:
        """The first output line starting with `prefix`, waiting (bounded) for it to be printed."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(ln.startswith(prefix) for ln in self.lines) or self.eof.is_set(), timeout
            )
            matches = [ln for ln in self.lines if ln.startswith(prefix)]
        assert found and matches, f"no line starting with {prefix!r}:\n{self.output()}"
        return matches[0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        match = KEY_RE.search(self.curl_line)
        assert match, self.curl_line
        return match.group(1)

    def output(self) -> str:
        return "\n".join(self.lines)

    def terminate(self) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            return None
        self.eof.wait(timeout=STOP_TIMEOUT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def start(data_dir: Path, *extra: str) -> Served:
    """Start the server and wait (bounded) for the curl line; a lost race for the port gets another port."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clexproxy",
                "serve",
                "--demo",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
            cwd=REPO,
        )
        served = Served(proc, port)
        if not served.banner_seen.wait(START_TIMEOUT):
            served.kill()
            pytest.fail(f"no curl line within {START_TIMEOUT}s:\n{served.output()}")
        if served.curl_line:
            return served
        served.kill()
        if "cannot listen" not in served.output():
            pytest.fail(f"clexproxy serve exited without a curl line:\n{served.output()}")
    pytest.fail("could not find a free port in 3 tries")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("serve") / "data")
    try:
        yield served
    finally:
        served.terminate()
        served.kill()


def assert_sse_done(text: str) -> None:
    events = [e for e in text.strip().split("\n\n") if e]
    assert len(events) >= 2, text
    assert all(e.startswith("data: ") for e in events), text
    assert events[-1] == "data: [DONE]", text
    assert '"error"' not in text


def test_banner(server: Served) -> None:
    assert f"http://127.0.0.1:{server.port}/v1/chat/completions" in server.curl_line
    assert server.key.startswith("clex_")
    sdk = server.wait_line("OpenAI SDK:")
    assert f"OpenAI(base_url='{server.base_url}/v1', api_key='{server.key}')" in sdk
    assert server.key in server.wait_line("Demo key")
    assert "demo upstream" in server.wait_line("clexproxy listening on")


def test_printed_curl_line_works(server: Served) -> None:
    """The exact line a user would paste into a shell."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not on PATH (the same request is made with aiohttp in the next test)")
    done = subprocess.run(
        ["bash", "-c", server.curl_line + " --silent --show-error --max-time 30"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    assert_sse_done(done.stdout)


async def test_printed_key_with_aiohttp(server: Served) -> None:
    """The curl line's request without curl: default `stream: true`, an SSE stream ending in [DONE]."""
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(
            server.base_url + "/v1/chat/completions",
            json={"model": LARGE, "messages": HELLO},
            headers={"Authorization": f"Bearer {server.key}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Clex-Credits-Limit"] == "2000"  # the demo account is on pro
        text = await resp.text()
    assert_sse_done(text)


async def test_openai_client(server: Served) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key=server.key, max_retries=0, timeout=30
    ) as client:
        completion = await client.chat.completions.create(model=LARGE, messages=HELLO, stream=False)
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(model=LARGE, messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == completion.choices[0].message.content
        models = [m.id async for m in await client.models.list()]
        assert LARGE in models
        with pytest.raises(openai.AuthenticationError):
            async with openai.AsyncOpenAI(
                base_url=server.base_url + "/v1", api_key="clex_" + "x" * 40, max_retries=0, timeout=30
            ) as wrong:
                await wrong.chat.completions.create(model=LARGE, messages=HELLO, stream=False)


async def remaining_credits(base_url: str, key: str) -> int:
    """One 3-credit call; the credits left after it."""
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(
            base_url + "/v1/chat/completions",
            json={"model": LARGE, "messages": HELLO, "stream": False},
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        await resp.read()
        return int(resp.headers["X-Clex-Credits-Remaining"])


async def test_sigterm_exits_0_and_restart_keeps_key_and_usage(tmp_path: Path) -> None:
    """A graceful stop exits 0 and writes usage behind; a second start on the same data dir prints the same key."""
    data = tmp_path / "data"
    first = start(data)
    try:
        day = utc_day(time.time())
        spent_left = await remaining_credits(first.base_url, first.key)
        assert spent_left == 1997
        assert first.terminate() == 0, first.output()
    finally:
        first.kill()
    assert (data / "demo_key").read_text().strip() == first.key

    second = start(data)
    try:
        assert second.key == first.key
        left = await remaining_credits(second.base_url, second.key)
        if utc_day(time.time()) == day:  # the budget resets at 00:00 UTC
            assert left == 1994
        assert second.terminate() == 0, second.output()
    finally:
        second.kill()


@pytest.mark.parametrize("args", [["--help"], ["keys", "--help"], ["serve", "--help"], ["--version"]])
def test_help(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clexproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "clexproxy" in done.stdout


def test_json_logs_and_a_separate_metrics_port(tmp_path: Path) -> None:
    """`--log-format json`: every log line on stdout is one JSON object; `--metrics-port` serves /metrics alone."""
    metrics_port = free_port()
    served = start(tmp_path / "data", "--log-format", "json", "--metrics-port", str(metrics_port))
    try:
        client = openai.OpenAI(base_url=served.base_url + "/v1", api_key=served.key, max_retries=0)
        client.chat.completions.create(model=LARGE, messages=HELLO, stream=False, extra_headers={"X-Request-Id": "j-1"})
        line = served.wait_line('{"ts"')
        assert line.startswith("{")
        access = None
        for _ in range(100):  # bounded: the access line follows the answer
            found = [ln for ln in served.lines if '"j-1"' in ln]
            if found:
                access = found[0]
                break
            time.sleep(0.05)
        assert access is not None, served.output()
        import json

        doc = json.loads(access)
        assert doc["status"] == 200 and doc["model"] == LARGE and doc["level"] == "info" and doc["credits"] == 3
        log_lines = [ln for ln in served.lines if ln.startswith("{")]
        assert all(json.loads(ln)["level"] for ln in log_lines)
        assert not any(served.key in ln for ln in log_lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'clexproxy_requests_total{api="chat",endpoint="/chat/completions"' in text  # labels sorted
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/v1/models", timeout=10)
    finally:
        assert served.terminate() == 0
