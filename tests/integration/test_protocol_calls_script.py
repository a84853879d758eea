"""benchmarks/protocol_calls.py, the driver of `instructions_per_request.sh API=...`, against a real gateway.

It must make every call it is asked for, on the ingress asked, and stop with an error at the first
answer that is not a 200: a count of instructions over calls that failed would measure the wrong path.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from clexproxy.demo.upstream import DemoServer
from tests.integration.conftest import RunningGateway
from tests.metrics_samples import parse_samples, sample_total

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "protocol_calls.py"


async def run_script(gw: RunningGateway, key: str, *args: str) -> tuple[int, str]:
    port = URL(gw.base_url).port
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--port", str(port), "--key", key, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
async def test_every_call_is_made_on_the_ingress_asked(gw: RunningGateway, key: str, upstream: DemoServer,
                                                       api: str, stream: bool) -> None:
    code, stderr = await run_script(gw, key, "--api", api, "--requests", "5", "--tokens", "4",
                                    *(["--stream"] if stream else []))
    assert code == 0, stderr
    seen = upstream.recorder.requests  # every ingress reaches the demo's chat completions
    assert len(seen) == 5
    assert all(r.path == "/v1/chat/completions" and r.body.get("stream") is stream for r in seen)
    assert all(r.headers.get("x-demo-tokens") == "4" for r in seen)
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/metrics") as response:
        found = parse_samples(await response.text())
    assert sample_total(found, "clexproxy_requests_total", api=api, status_class="2xx") == 5


async def test_a_refused_call_stops_the_run_with_its_status(gw: RunningGateway) -> None:
    code, stderr = await run_script(gw, "clex_" + "x" * 43, "--api", "responses", "--requests", "3")
    assert code != 0
    assert "responses: HTTP 401" in stderr
