"""benchmarks/load.py, run as users run it: a subprocess against a real demo upstream on loopback.

Why a subprocess: the script's own entry point (argparse, uvloop, the JSON report) is what people rely on when they
compare numbers, and a result whose counts do not add up would make every benchmark built on it wrong.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from clexproxy.demo.upstream import DemoServer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"
MODEL = "meta/llama-3.1-8b-instruct"


async def run_load(url: str, *args: str) -> dict[str, Any]:
    """Run the script to completion (the upstream keeps serving on this loop meanwhile) and parse its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--url", url, "--key", "test-key", "--model", MODEL, "--json", "--quiet", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode()
    result: dict[str, Any] = orjson.loads(stdout)
    return result


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
async def test_counts_add_up(upstream: DemoServer, stream: bool) -> None:
    tokens = 3
    res = await run_load(
        upstream.url, "--requests", "200", "--concurrency", "8", "--tokens", str(tokens),
        "--stream" if stream else "--no-stream",
    )
    assert res["requests"] == 200
    assert res["ok"] == 200
    assert res["errors"] == 0
    assert res["statuses"] == {"200": 200}
    assert res["failures"] == {}
    assert res["latency_ms"]["count"] == 200
    assert 0 < res["latency_ms"]["p50"] <= res["latency_ms"]["p99"] <= res["latency_ms"]["max"]
    assert res["requests_per_s"] > 0
    seen = upstream.recorder.requests
    assert len(seen) == 200
    assert all(r.body.get("stream") is stream and r.headers.get("x-demo-tokens") == str(tokens) for r in seen)
    assert all(r.authorization == "Bearer test-key" for r in seen)
    if stream:
        assert res["ttft_ms"]["count"] == 200
        # At least one event per content token plus `[DONE]`, and every stream framed the same way.
        assert res["events"] % 200 == 0
        assert res["events"] // 200 >= tokens + 1
    else:
        assert "ttft_ms" not in res


async def test_error_statuses_are_counted(upstream: DemoServer) -> None:
    res = await run_load(
        upstream.url, "--requests", "50", "--concurrency", "8", "--header", "x-demo-status: 503", "--no-stream"
    )
    assert (res["requests"], res["ok"], res["errors"]) == (50, 0, 50)
    assert res["statuses"] == {"503": 50}
    assert res["latency_all_ms"]["count"] == 50


async def test_stream_cut_short_is_an_error(upstream: DemoServer) -> None:
    res = await run_load(upstream.url, "--requests", "20", "--concurrency", "4", "--header", "x-demo-drop-after:2")
    assert (res["requests"], res["ok"], res["errors"]) == (20, 0, 20)
    assert sum(res["failures"].values()) == 20


async def test_duration_bounds_the_run(upstream: DemoServer) -> None:
    res = await run_load(upstream.url, "--requests", "100000000", "--duration", "0.5", "--concurrency", "4")
    assert 0 < res["requests"] < 100_000_000
    assert res["errors"] == 0
    assert res["elapsed_s"] < 10


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("clexproxy_bench_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves annotations through sys.modules, so the script must be registered while it executes.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_percentile_nearest_rank() -> None:
    load = _load_module()
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 50) == 50.0
    assert load.percentile(values, 99) == 99.0
    assert load.percentile(values, 100) == 100.0
    assert load.percentile([7.0], 99) == 7.0
    assert load.percentile([], 50) == 0.0
