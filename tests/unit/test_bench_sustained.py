"""`make bench`'s (i) and (j): the mock upstream answers as HTTP/1.1 requires, and the ramp and targets judge right.

Why: (j) reads the gateway's ceiling off a ramp of loads, and (i) a 5 % CPU target. A mock that
answered out of order, a ramp that kept a load past p99 1 s or 0.1 % errors, or a target line that
called a miss met would make both figures say nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: u\r\nContent-Length: 7\r\n\r\n{\"a\":1}"


async def exchange(raw: bytes | list[bytes], answers: int) -> tuple[bytes, bool]:
    """What a real `SlowUpstream` (1 ms) answers to `raw` (written in pieces when a list): the bytes of
    `answers` responses, and whether it closed the connection."""
    slow = load("slow_upstream")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: slow.SlowUpstream(0.001), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in [raw] if isinstance(raw, bytes) else raw:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # so each piece is a read of its own
        got = b""
        while got.count(b"HTTP/1.1 ") < answers or not got.endswith((slow.ANSWER, b"\r\n\r\n")):
            more = await asyncio.wait_for(reader.read(65536), 10)
            if not more:
                return got, True
            got += more
        closed = await asyncio.wait_for(reader.read(1), 10) == b"" if b"Connection: close" in got else False
        writer.close()
        return got, closed
    finally:
        server.close()
        await server.wait_closed()


async def test_the_mock_answers_every_request_in_order_pipelined_or_split() -> None:
    slow = load("slow_upstream")
    got, closed = await exchange(REQUEST * 3, 3)
    assert got == slow.RESPONSE * 3 and not closed
    got, closed = await exchange([REQUEST[:20], REQUEST[20:60], REQUEST[60:] + REQUEST[:5], REQUEST[5:]], 2)
    assert got == slow.RESPONSE * 2 and not closed


@pytest.mark.parametrize("raw", [
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", id="chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", id="negative length"),
    pytest.param(b"POST / HTTP/1.1\r\nX: " + b"a" * 70_000, id="endless head"),
])
async def test_the_mock_refuses_what_it_does_not_read(raw: bytes) -> None:
    got, closed = await exchange(raw, 1)
    assert got.startswith(b"HTTP/1.1 400 ") and closed


class ScriptedBench:
    """The one method `sustained` calls, answering each load from a script: the ramp's decisions alone."""

    quick = False

    def __init__(self, results: dict[int, dict[str, Any]]) -> None:
        self.results = results
        self.asked: list[int] = []

    def measure(self, server: Any, url: str, connections: int, **kw: Any) -> dict[str, Any]:
        self.asked.append(connections)
        return {"requests": 10_000, "non2xx": 0, "errors": 0, "p50_ms": 20.0, **self.results[connections]}


def test_the_ramp_keeps_the_best_load_held_and_stops_at_the_first_not_held() -> None:
    bench = load("bench")
    scripted = ScriptedBench({32: {"rps": 1500.0, "p99_ms": 30.0}, 64: {"rps": 3000.0, "p99_ms": 40.0},
                              128: {"rps": 4000.0, "p99_ms": 900.0}, 256: {"rps": 4500.0, "p99_ms": 1000.0},
                              512: {"rps": 9999.0, "p99_ms": 10.0}})
    row = bench.sustained(scripted, "clexproxy", None, "http://x/v1", {})
    assert scripted.asked == [32, 64, 128, 256]
    assert (row["rps"], row["connections"], row["target"]) == (4000.0, 128, "clexproxy")
    assert row["ramp"].endswith("256: 4,500/s p99 1,000 ms (0.00% errors) — not held")


def test_errors_end_the_ramp_and_so_does_a_fall_past_the_knee() -> None:
    bench = load("bench")
    errors = ScriptedBench({32: {"rps": 1500.0, "p99_ms": 30.0}, 64: {"rps": 3000.0, "p99_ms": 40.0, "non2xx": 10}})
    assert bench.sustained(errors, "t", None, "u", {})["rps"] == 1500.0  # 0.1 % of 10,000: not held
    falling = ScriptedBench({32: {"rps": 2000.0, "p99_ms": 30.0}, 64: {"rps": 1700.0, "p99_ms": 40.0},
                             128: {"rps": 9999.0, "p99_ms": 10.0}})
    row = bench.sustained(falling, "t", None, "u", {})
    assert falling.asked == [32, 64] and row["rps"] == 2000.0
    none = ScriptedBench({32: {"rps": 100.0, "p99_ms": 5000.0}})
    assert bench.sustained(none, "t", None, "u", {})["rps"] == 0.0


def test_the_targets_of_i_and_j() -> None:
    bench = load("bench")
    rows = [{"target": "clexproxy", "cpu_us": 400.0}, {"target": bench.WORKERS_ROW, "cpu_us": 420.0}]
    assert [line for line in bench.targets_section({"i": rows}) if line.startswith("- (i)")] == [
        "- (i) `--workers 2 --redis` within 5% of one worker's CPU µs/request: +5.0% (420 vs 400) — met"]
    rows[1]["cpu_us"] = 421.0
    assert bench.targets_section({"i": rows})[2].endswith("— not met")
    sustained = [{"target": "direct", "rps": 20_000.0}, {"target": "baseline", "rps": 1_000.0},
                 {"target": "clexproxy", "rps": 2_500.0}]
    assert bench.targets_section({"j": sustained})[2] == (
        "- (j) sustained at p99 < 1 s, < 0.1 % errors (measured, no target): clexproxy 2,500/s, 2.50 x baseline; "
        "the mock upstream alone 20,000/s (8.0 x clexproxy)")


def test_a_process_tree_costs_at_least_its_root() -> None:
    bench = load("bench")
    assert bench.tree_cpu_seconds(os.getpid()) >= bench.cpu_seconds(os.getpid()) > 0


def test_the_p99_target_of_c_is_judged_against_nginx_proxy_pass() -> None:
    bench = load("bench")
    rows = [{"target": "direct", "added_p50_ms": 0.0, "added_p99_ms": 0.0},
            {"target": "baseline", "added_p50_ms": 0.5, "added_p99_ms": 1.7},
            {"target": bench.NGINX_PROXY, "added_p50_ms": 0.05, "added_p99_ms": 0.25},
            {"target": "clexproxy", "added_p50_ms": 0.3, "added_p99_ms": 0.35}]
    assert [line for line in bench.targets_section({"c": rows}) if "p99" in line] == [
        "- (c) p99 added ≤ nginx proxy_pass's + 0.1 ms: 0.350 ms vs 0.250 ms — met"]
    rows[3]["added_p99_ms"] = 0.351
    assert next(line for line in bench.targets_section({"c": rows}) if "p99" in line).endswith("— not met")


def test_the_lean_path_targets_and_the_peers_table_read_a_run() -> None:
    """(a) and (b) are judged against issue 14's 1.7 x (and its stretch), and the board's peers sit beside our rows."""
    bench = load("bench")
    rows = [{"target": "baseline", "rps": 2_000.0}, {"target": "clexproxy", "rps": 4_700.0}]
    latency = [{"target": "clexproxy", "added_p50_ms": 0.3, "added_p99_ms": 0.6},
               {"target": "baseline", "added_p50_ms": 0.4, "added_p99_ms": 1.5}]
    lines = bench.targets_section({"a": rows, "b": [rows[0], {"target": "clexproxy", "rps": 3_000.0}]})
    assert lines[2] == "- (a) clexproxy ≥ 1.7 x the bare aiohttp floor (stretch 2.3 x): 2.35 x — met, stretch met"
    assert lines[3] == "- (b) clexproxy ≥ 1.7 x the bare aiohttp floor (stretch 2.3 x): 1.50 x — not met"
    table = bench.peers_section({"a": rows, "c": latency})
    assert "| Busbar | 11,624 | 0.116 | the board |" in table
    assert "| clexproxy | 4,700 | 0.600 | this run |" in table
    assert bench.peers_section({"c": latency}) == []  # no (a) in the run: no table
