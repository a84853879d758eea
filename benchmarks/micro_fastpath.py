"""Microbenchmarks of the compiled fastpath modules (`clexproxy.fastpath._sse`, ...) against their pure-Python twins.

Why it exists: the extension is only worth its build step and its maintenance if it is much faster than the twin
on the paths that run per streamed chunk and per request. This script puts a number on each of those paths, for
both implementations, with the same inputs and the same calling code, so the ratio is the implementation's and not
the harness's.

What is measured (each as the best of several repeats, because the machines we run on are shared and noisy; the
best run is the one least disturbed by other work, which is the closest to the code's own cost):

* SSE parsing of a realistic OpenAI-style chat stream (``data: {chunk}`` events of ~250 bytes, the finishing
  chunk, the usage-only chunk and ``[DONE]``), one new parser per stream, fed whole events the way upstream reads
  usually arrive, and fed 1,400-byte TCP-sized slices that cut events anywhere. Reported as MB/s and ns/event.
* `has_usage` on an ordinary content chunk (``"usage":null``, the answer is no) and on the usage chunk.
* `TokenBuckets.acquire` with a clock that moves forward, `CreditLedger.reserve` + `refund`, and
  `KeyTable.lookup` for a known key (hit) and a well-formed unknown one (miss; it still pays for the hash).
* `request_head` on a chat-completions request, as the lean connection scans each head.
* `text_delta` on an ordinary content chunk, as a translated stream (Responses or Messages client, OpenAI
  provider) reads each of its events.

The per-op numbers include the Python call from the benchmark loop, because that is what the gateway pays too.

Usage::

    python benchmarks/micro_fastpath.py [--quick] [--json | --markdown]

``--quick`` (< 10 s) is for smoke tests; the full run takes well under a minute. ``--json`` gives, per operation,
``ns_per_op`` for ``compiled`` and ``pure`` (for SSE one operation is a whole stream, and ``ns_per_event`` and
``mb_per_s`` are added) and ``speedup``, the pure time over the compiled one.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Benchmark the checkout this script belongs to (and its in-place build), not whatever is installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONCEPTS = ("sse", "limits", "keys", "scan", "deltas")
COMPILED = "clexproxy.fastpath._{}"  # formatted with a concept
PURE = "clexproxy.fastpath._{}_py"

TCP_SLICE = 1400  # about one TCP segment's payload on an Ethernet path (MSS 1,448 B with timestamps)
CONTENT_EVENTS = 50

# A timed batch (calibrated to last at least this long) and how many batches to keep the best of.
FULL = {"batch_ns": 50_000_000, "repeats": 11}
QUICK = {"batch_ns": 12_000_000, "repeats": 5}

Runner = Callable[[int], int]  # runs `n` operations and returns the elapsed nanoseconds


# --- inputs -------------------------------------------------------------------------------------------------------

_HEAD = (
    b'{"id":"chatcmpl-AX7fQ2mZk9Lr4TbV1cYwE8hNpD3sG","object":"chat.completion.chunk","created":1732560734,'
    b'"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":['
)
_WORDS = (
    b" The", b" quick", b" brown", b" fox", b" jumps", b" over", b" the", b" lazy", b" dog", b".",
    b" It", b" was", b" not", b" amused", b",", b" and", b" said", b" so", b" loudly", b"!",
)


def chat_stream() -> tuple[bytes, int]:
    """A chat completion stream as OpenAI sends it with ``stream_options.include_usage``; returns (bytes, events).

    Every content chunk carries ``"usage":null`` in that mode, which is the case `has_usage` must reject quickly.
    """
    events = [
        _HEAD + b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,'
        b'"finish_reason":null}],"usage":null}'
    ]
    for i in range(CONTENT_EVENTS - 1):
        word = _WORDS[i % len(_WORDS)]
        events.append(
            _HEAD + b'{"index":0,"delta":{"content":"' + word + b'"},"logprobs":null,"finish_reason":null}],'
            b'"usage":null}'
        )
    events.append(_HEAD + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}')
    events.append(usage_chunk())
    events.append(b"[DONE]")
    return b"".join(b"data: " + e + b"\n\n" for e in events), len(events)


def usage_chunk() -> bytes:
    return _HEAD + (
        b'],"usage":{"prompt_tokens":412,"completion_tokens":50,"total_tokens":462,'
        b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
        b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
        b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}'
    )


def content_chunk() -> bytes:
    return _HEAD + b'{"index":0,"delta":{"content":" fox"},"logprobs":null,"finish_reason":null}],"usage":null}'


def split_events(stream: bytes) -> list[bytes]:
    """Whole events, one per read: how a token-by-token upstream usually arrives."""
    return [part + b"\n\n" for part in stream.split(b"\n\n")[:-1]]


def split_slices(stream: bytes, size: int) -> list[bytes]:
    """Fixed-size reads that cut events (and lines) at arbitrary places."""
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def key(i: int) -> str:
    """A well-formed key like the generated ones: the prefix and 43 URL-safe base64 characters (256 bits)."""
    return "clex_" + base64.urlsafe_b64encode(hashlib.sha256(b"%d" % i).digest()).rstrip(b"=").decode()


# --- the operations, as closures that run `n` of themselves ------------------------------------------------------


def sse_runner(fp: ModuleType, pieces: list[bytes]) -> Runner:
    parser_type = fp.SSEParser

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            parser = parser_type()
            feed = parser.feed
            for piece in pieces:
                feed(piece)
            parser.close()
        return time.perf_counter_ns() - t0

    return run


def has_usage_runner(fp: ModuleType, data: bytes) -> Runner:
    has_usage = fp.has_usage

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            has_usage(data)
        return time.perf_counter_ns() - t0

    return run


def acquire_runner(fp: ModuleType) -> Runner:
    buckets = fp.TokenBuckets()
    acquire = buckets.acquire
    clock = [0.0]

    def run(n: int) -> int:
        # One token back per call (1 ms at 1,000/s): the steady state of a busy account under its limit.
        nows = [clock[0] + 0.001 * i for i in range(1, n + 1)]
        clock[0] = nows[-1]
        t0 = time.perf_counter_ns()
        for now in nows:
            acquire(7, 60_000.0, 1_000.0, now)
        return time.perf_counter_ns() - t0

    return run


def ledger_runner(fp: ModuleType) -> Runner:
    ledger = fp.CreditLedger()
    ledger.set_account(7, 10**15, 20_000, 0)
    reserve, refund = ledger.reserve, ledger.refund

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            reserve(7, 25, 20_000)
            refund(7, 25, 20_000)
        elapsed = time.perf_counter_ns() - t0
        ledger.drain_usage()
        return elapsed

    return run


def lookup_runner(fp: ModuleType, hit: bool) -> Runner:
    table = fp.KeyTable()
    for i in range(1_000):
        table.add(fp.hash_key(key(i)), i, i // 3)
    presented = key(500 if hit else 10_000)
    lookup = table.lookup
    if (lookup(presented) is not None) is not hit:
        raise AssertionError(f"{fp.__name__}: lookup of {presented!r} should {'' if hit else 'not '}find it")

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            lookup(presented)
        return time.perf_counter_ns() - t0

    return run


def request_head_runner(fp: ModuleType) -> Runner:
    """The lean connection's scan of a chat-completions head as an SDK sends it (`LeanConnection`)."""
    body = b'{"model":"meta/llama-3.1-8b-instruct","messages":[{"role":"user","content":"Hello!"}],"stream":false}'
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer " + key(1).encode()
        + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: wrk\r\n"
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    scan = fp.request_head
    if not scan(raw):
        raise AssertionError(f"{fp.__name__}: request_head refused the benchmark's request")

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            scan(raw)
        return time.perf_counter_ns() - t0

    return run


def text_delta_runner(fp: ModuleType, content: bytes) -> Runner:
    text_delta = fp.text_delta
    if text_delta(content) != " fox":
        raise AssertionError(f"{fp.__name__}: text_delta did not read the benchmark's content chunk")

    def run(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            text_delta(content)
        return time.perf_counter_ns() - t0

    return run


# --- timing -------------------------------------------------------------------------------------------------------


def calibrate(run: Runner, batch_ns: int) -> int:
    """How many operations make a batch of about `batch_ns`; the runs also warm caches and allocators up."""
    n = 1
    while True:
        elapsed = run(n)
        if elapsed >= batch_ns // 4:
            return max(1, round(n * batch_ns / elapsed))
        n *= 8 if elapsed < batch_ns // 64 else 2


def best_ns_per_op(runs: list[Runner], batch_ns: int, repeats: int) -> list[float]:
    """Best-of-`repeats` time per operation of each runner, their batches interleaved.

    Interleaving (A, B, A, B, ...) rather than timing A's repeats then B's means that a burst of other work on the
    machine lands on both implementations alike instead of skewing their ratio. The collector is off while timing
    (as `timeit` does), so a collection triggered by earlier garbage is not billed to whichever operation runs.
    """
    sizes = [calibrate(run, batch_ns) for run in runs]
    best = [float("inf")] * len(runs)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for i, (run, n) in enumerate(zip(runs, sizes, strict=True)):
                best[i] = min(best[i], run(n) / n)
    finally:
        if was_enabled:
            gc.enable()
    return best


@dataclass(frozen=True)
class Operation:
    """One row of the report: how to build its runner from a concept's module, and what one operation holds."""

    name: str
    label: str
    concept: str  # the fastpath concept whose module `make` is given
    make: Callable[[ModuleType], Runner]
    events: int = 1  # for SSE: events per operation (one stream), for ns/event
    nbytes: int = 0  # for SSE: bytes per operation, for MB/s


def operations() -> list[Operation]:
    stream, nevents = chat_stream()
    events = split_events(stream)
    slices = split_slices(stream, TCP_SLICE)
    content, usage = content_chunk(), usage_chunk()
    return [
        Operation(
            "sse_events", f"SSE parse, one event per feed ({nevents} events, {len(stream):,} B)", "sse",
            lambda fp: sse_runner(fp, events), nevents, len(stream),
        ),
        Operation(
            "sse_tcp", f"SSE parse, {TCP_SLICE:,} B slices ({len(slices)} feeds)", "sse",
            lambda fp: sse_runner(fp, slices), nevents, len(stream),
        ),
        Operation(
            "has_usage_content", "has_usage, content chunk (no)", "sse", lambda fp: has_usage_runner(fp, content)
        ),
        Operation("has_usage_usage", "has_usage, usage chunk (yes)", "sse", lambda fp: has_usage_runner(fp, usage)),
        Operation("bucket_acquire", "TokenBuckets.acquire", "limits", acquire_runner),
        Operation("ledger_reserve_refund", "CreditLedger.reserve + refund", "limits", ledger_runner),
        Operation("key_lookup_hit", "KeyTable.lookup, hit", "keys", lambda fp: lookup_runner(fp, True)),
        Operation(
            "key_lookup_miss", "KeyTable.lookup, miss (well-formed)", "keys", lambda fp: lookup_runner(fp, False)
        ),
        Operation(
            "request_head", "request_head, a chat call's head (the lean connection's scan)", "scan",
            request_head_runner,
        ),
        Operation(
            "text_delta", "text_delta, content chunk (its text)", "deltas", lambda fp: text_delta_runner(fp, content)
        ),
    ]


def check_same_events(compiled: ModuleType, pure: ModuleType) -> None:
    """Refuse to time parsers that disagree: a fast wrong answer is not a speed-up."""
    stream, nevents = chat_stream()
    for pieces in (split_events(stream), split_slices(stream, TCP_SLICE)):
        seen = []
        for fp in (compiled, pure):
            parser = fp.SSEParser()
            got = [(e.raw, e.data, e.event, e.id, e.comment_only) for p in pieces for e in parser.feed(p)]
            seen.append((got, parser.close()))
        if seen[0] != seen[1] or len(seen[0][0]) != nevents or b"".join(e[0] for e in seen[0][0]) != stream:
            raise AssertionError("the compiled and pure-Python SSE parsers disagree on the benchmark stream")


def load(concept: str) -> tuple[ModuleType, ModuleType]:
    """A concept's compiled module and its twin."""
    name = COMPILED.format(concept)
    try:
        compiled = importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(f"{name} is not built ({exc}); run `python setup.py build_ext --inplace` first") from exc
    return compiled, importlib.import_module(PURE.format(concept))


def measure(quick: bool) -> dict[str, Any]:
    modules = {concept: load(concept) for concept in CONCEPTS}
    check_same_events(*modules["sse"])
    settings = QUICK if quick else FULL
    results: dict[str, Any] = {}
    for op in operations():
        row: dict[str, Any] = {"label": op.label}
        compiled, pure = modules[op.concept]
        timings = best_ns_per_op([op.make(compiled), op.make(pure)], settings["batch_ns"], settings["repeats"])
        for impl, ns in zip(("compiled", "pure"), timings, strict=True):
            entry: dict[str, float] = {"ns_per_op": ns}
            if op.nbytes:
                entry["ns_per_event"] = ns / op.events
                entry["mb_per_s"] = op.nbytes / ns * 1e3  # bytes/ns -> MB/s (10^6 B)
            row[impl] = entry
        row["speedup"] = row["pure"]["ns_per_op"] / row["compiled"]["ns_per_op"]
        results[op.name] = row
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "modules": {
            "compiled": [compiled.__name__ for compiled, _ in modules.values()],
            "pure": [pure.__name__ for _, pure in modules.values()],
        },
        "quick": quick,
        "repeats": settings["repeats"],
        "batch_ms": settings["batch_ns"] / 1e6,
        "results": results,
    }


# --- output -------------------------------------------------------------------------------------------------------


def cell(entry: dict[str, float]) -> str:
    if "mb_per_s" in entry:
        return f"{entry['mb_per_s']:,.0f} MB/s, {entry['ns_per_event']:,.0f} ns/event"
    return f"{entry['ns_per_op']:,.0f} ns/op"


def markdown(report: dict[str, Any]) -> str:
    lines = ["| operation | compiled | pure Python | speed-up |", "|---|---:|---:|---:|"]
    for row in report["results"].values():
        lines.append(f"| {row['label']} | {cell(row['compiled'])} | {cell(row['pure'])} | {row['speedup']:.1f}x |")
    return "\n".join(lines)


def text(report: dict[str, Any]) -> str:
    mode = "quick" if report["quick"] else "full"
    lines = [f"Python {report['python']} on {report['machine']}, {mode} run, best of {report['repeats']}", ""]
    width = max(len(row["label"]) for row in report["results"].values())
    for row in report["results"].values():
        compiled, pure = cell(row["compiled"]), cell(row["pure"])
        lines.append(f"{row['label']:<{width}}  {compiled:>30}  {pure:>30}  {row['speedup']:6.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (< 10 s), for smoke tests")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print machine-readable results")
    out.add_argument("--markdown", action="store_true", help="print a table for benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    report = measure(args.quick)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(markdown(report))
    else:
        print(text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
