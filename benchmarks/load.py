"""An asyncio load generator for clexproxy or any OpenAI-compatible chat-completions endpoint.

Why a bespoke tool rather than wrk alone: the numbers that matter for an LLM gateway are per-stream (time to
first token, gaps between chunks) as well as per-request, and the answer statuses (429s from the plan's limit,
503s from an overloaded upstream) are part of the result, not noise. The client must stay cheaper than the server
it measures, so it keeps per-request work small: the request body and headers are built once, responses are never
JSON-parsed (a stream's events are counted by scanning bytes for ``\\ndata:``), and statistics are raw samples
sorted once at the end.

Example, against ``make run``::

    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:8080/v1 \\
        --key "$(cat .clexproxy-data/demo_key)" --model meta/llama-3.1-8b-instruct --requests 3000

The run ends after ``--requests`` requests or ``--duration`` seconds, whichever comes first (only ``--duration``
given: the duration alone bounds it); requests in flight at that moment are allowed to finish, each bounded by
``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

DEFAULT_REQUESTS = 10_000
# Stream events start a line; JSON strings escape newlines, so this never matches inside a chunk's payload.
_EVENT = b"\ndata:"
_CARRY = len(_EVENT) - 1
_ERROR_EVENT = b'{"error"'
_DONE = b"[DONE]"
_TAIL = 32
# Inter-chunk gaps grow with tokens x requests; past this many samples a uniform reservoir keeps memory flat.
_MAX_GAP_SAMPLES = 2_000_000


class Reservoir:
    """A uniform sample of at most `capacity` floats (Vitter's algorithm R), so long streaming runs stay bounded."""

    __slots__ = ("capacity", "samples", "seen")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.samples: array[float] = array("d")
        self.seen = 0

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.samples) < self.capacity:
            self.samples.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < self.capacity:
                self.samples[slot] = value


@dataclass(slots=True)
class Stats:
    """Raw samples and counters; percentiles are computed once, after the run."""

    started: float = 0.0
    finished: float = 0.0
    issued: int = 0
    done: int = 0
    ok: int = 0
    events: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # Failures that have no HTTP status of their own: exceptions by class name, broken or error-ending streams.
    failures: Counter[str] = field(default_factory=Counter)
    latency_ok: array[float] = field(default_factory=lambda: array("d"))
    latency_all: array[float] = field(default_factory=lambda: array("d"))
    ttft: array[float] = field(default_factory=lambda: array("d"))
    gaps: Reservoir = field(default_factory=lambda: Reservoir(_MAX_GAP_SAMPLES))

    @property
    def errors(self) -> int:
        return self.done - self.ok


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ms(samples: Sequence[float]) -> dict[str, float]:
    """Count, mean and p50/p90/p99/max of samples in seconds, reported in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered) * 1000.0, 3),
        "p50": round(percentile(ordered, 50) * 1000.0, 3),
        "p90": round(percentile(ordered, 90) * 1000.0, 3),
        "p99": round(percentile(ordered, 99) * 1000.0, 3),
        "max": round(ordered[-1] * 1000.0, 3),
    }


def parse_header(text: str) -> tuple[str, str]:
    """`K:V` (spaces around either part ignored) for --header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="load.py",
        description="Load generator for OpenAI-compatible chat completions (clexproxy, its demo upstream, ...).",
    )
    parser.add_argument("--url", required=True, help="base URL including /v1, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--key", default="", help="API key sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--model", required=True, help="model id to request")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument(
        "--requests", type=int, default=None,
        help=f"total requests (default {DEFAULT_REQUESTS}, or unlimited when only --duration is given)",
    )
    parser.add_argument("--duration", type=float, default=None, help="stop issuing requests after this many seconds")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="streaming (SSE) requests (default) or --no-stream")
    parser.add_argument("--tokens", type=int, default=None,
                        help="completion tokens asked of the demo upstream (sent as x-demo-tokens)")
    parser.add_argument("--max-tokens", type=int, default=None, help="max_tokens in the request body")
    parser.add_argument("--prompt", default="Say hello.", help="user message content")
    parser.add_argument("--header", action="append", type=parse_header, default=[], metavar="K:V",
                        help="extra request header (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request total timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.requests is None and args.duration is None:
        args.requests = DEFAULT_REQUESTS
    if args.tokens is not None and args.tokens < 0:
        parser.error("--tokens must be non-negative")
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")


def request_body(args: argparse.Namespace) -> bytes:
    """The one serialized body every request reuses."""
    body: dict[str, Any] = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": args.stream,
    }
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    return orjson.dumps(body)


def request_headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    if args.stream:
        headers["Accept"] = "text/event-stream"
    if args.tokens is not None:
        headers["x-demo-tokens"] = str(args.tokens)
    for name, value in args.header:
        headers[name] = value
    return headers


class LoadRun:
    """One bounded run: `concurrency` workers sharing a request budget and a deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url.rstrip("/") + "/chat/completions"
        self.body = request_body(args)
        self.headers = request_headers(args)
        self.limit: int | None = args.requests
        self.deadline = math.inf
        self.stats = Stats()

    def _claim(self) -> bool:
        """Take one request from the budget, or say the run is over (single-threaded: no lock needed)."""
        stats = self.stats
        if self.limit is not None and stats.issued >= self.limit:
            return False
        if time.perf_counter() >= self.deadline:
            return False
        stats.issued += 1
        return True

    async def _one(self, session: aiohttp.ClientSession) -> None:
        stats = self.stats
        t0 = time.perf_counter()
        failure: str | None = None
        status = 0
        try:
            async with session.post(self.url, data=self.body, headers=self.headers) as resp:
                status = resp.status
                if status == 200 and self.args.stream:
                    failure = await self._consume_stream(resp, t0)
                else:
                    await resp.read()
        except TimeoutError:
            failure = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            failure = type(exc).__name__
        elapsed = time.perf_counter() - t0
        stats.done += 1
        stats.latency_all.append(elapsed)
        if status:
            stats.statuses[status] += 1
        if failure is not None:
            stats.failures[failure] += 1
        elif 200 <= status < 300:
            stats.ok += 1
            stats.latency_ok.append(elapsed)

    async def _consume_stream(self, resp: aiohttp.ClientResponse, t0: float) -> str | None:
        """Count `data:` events as the bytes arrive; time the first one and the gaps between reads that carry any.

        Events that arrive in one read share one arrival time, so gaps are measured per read, as the client sees
        them. Returns a failure name for a stream that carried an error event or ended without `[DONE]`.
        """
        stats = self.stats
        carry = b"\n"  # the stream's first event has no newline before it
        tail = b""
        last = 0.0
        events = 0
        error_event = False
        async for chunk in resp.content.iter_any():
            found = chunk.count(_EVENT) + (carry + chunk[:_CARRY]).count(_EVENT)
            if found:
                now = time.perf_counter()
                if events:
                    stats.gaps.add(now - last)
                else:
                    stats.ttft.append(now - t0)
                last = now
                events += found
                stats.events += found
                if _ERROR_EVENT in chunk:
                    error_event = True
            carry = (carry + chunk[-_CARRY:])[-_CARRY:]
            tail = (tail + chunk[-_TAIL:])[-_TAIL:]
        if error_event:
            return "stream_error_event"
        if _DONE not in tail:
            return "stream_incomplete"
        return None

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while self._claim():
            await self._one(session)

    async def _progress(self) -> None:
        stats = self.stats
        previous = 0
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.perf_counter() - stats.started
            rate = stats.done - previous
            previous = stats.done
            in_flight = stats.issued - stats.done
            print(
                f"{elapsed:7.1f}s  done {stats.done:>9}  {rate:>7}/s  errors {stats.errors:>7}  in flight {in_flight}",
                file=sys.stderr,
                flush=True,
            )

    async def run(self) -> Stats:
        args = self.args
        workers = args.concurrency if self.limit is None else min(args.concurrency, self.limit)
        connector = aiohttp.TCPConnector(limit=args.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.stats.started = time.perf_counter()
            if args.duration is not None:
                self.deadline = self.stats.started + args.duration
            progress = None if args.quiet else asyncio.create_task(self._progress())
            try:
                await asyncio.gather(*(self._worker(session) for _ in range(workers)))
            finally:
                self.stats.finished = time.perf_counter()
                if progress is not None:
                    progress.cancel()
        return self.stats


def result(args: argparse.Namespace, stats: Stats) -> dict[str, Any]:
    """Everything the table shows, as one JSON-ready mapping."""
    elapsed = max(stats.finished - stats.started, 1e-9)
    out: dict[str, Any] = {
        "url": args.url,
        "model": args.model,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "requests": stats.done,
        "ok": stats.ok,
        "errors": stats.errors,
        "statuses": {str(code): n for code, n in sorted(stats.statuses.items())},
        "failures": dict(sorted(stats.failures.items())),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(stats.done / elapsed, 1),
        "ok_per_s": round(stats.ok / elapsed, 1),
        "latency_ms": summarize_ms(stats.latency_ok),
        "latency_all_ms": summarize_ms(stats.latency_all),
    }
    if args.stream:
        out["events"] = stats.events
        out["ttft_ms"] = summarize_ms(stats.ttft)
        out["gap_ms"] = summarize_ms(stats.gaps.samples)
        out["gap_samples_seen"] = stats.gaps.seen
    return out


def _row(label: str, s: dict[str, float], keys: Sequence[str]) -> str:
    return f"{label:<22}" + "".join(f"{k} {s[k]:>9.2f}   " for k in keys).rstrip()


def render(res: dict[str, Any]) -> str:
    mode = "stream" if res["stream"] else "no-stream"
    lines = [
        f"target                {res['url']}  model {res['model']}  {mode}  concurrency {res['concurrency']}",
        f"requests              {res['requests']} in {res['elapsed_s']:.2f} s   ok {res['ok']}"
        f"   errors {res['errors']}",
        f"requests/s            {res['requests_per_s']:.1f}   (ok {res['ok_per_s']:.1f}/s)",
        "statuses              " + ("  ".join(f"{k}: {v}" for k, v in res["statuses"].items()) or "-"),
    ]
    if res["failures"]:
        lines.append("failures              " + "  ".join(f"{k}: {v}" for k, v in res["failures"].items()))
    pcts = ("p50", "p90", "p99", "max")
    lines.append(_row(f"latency ms (ok, {res['latency_ms']['count']})", res["latency_ms"], pcts))
    if res["errors"]:
        lines.append(_row("latency ms (all)", res["latency_all_ms"], pcts))
    if res["stream"]:
        lines.append(_row("ttft ms", res["ttft_ms"], ("p50", "p99", "max")))
        if res["gap_ms"]["count"]:
            lines.append(_row("inter-chunk gap ms", res["gap_ms"], ("p50", "p99", "max")))
        else:
            lines.append("inter-chunk gap ms    -   (every stream arrived in a single read)")
        per = res["events"] / res["ok"] if res["ok"] else 0.0
        lines.append(f"events                {res['events']}  ({per:.1f} per ok stream, [DONE] included)")
    return "\n".join(lines)


def _run(coro: Coroutine[Any, Any, Stats]) -> Stats:
    """On uvloop when installed: the client should not be the bottleneck it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    stats: Stats = uvloop.run(coro)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    load = LoadRun(args)
    interrupted = False
    try:
        stats = _run(load.run())
    except KeyboardInterrupt:
        # Ctrl-C still reports what was measured so far: a long run should not be all-or-nothing.
        interrupted = True
        stats = load.stats
        if not stats.finished:
            stats.finished = time.perf_counter()
    res = result(args, stats)
    if args.json:
        res["interrupted"] = interrupted
        sys.stdout.write(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(res) + ("\n(interrupted)" if interrupted else ""))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
