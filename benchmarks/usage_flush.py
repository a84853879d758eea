"""What the usage write-behind costs on SQLite, before and after the usage-by-key-and-model rows (issue 12).

Why it exists: every flush (`StoreSync`, every `[store] flush_seconds`) now writes a key x model x day
row beside each account's row, in the same transaction (`SQLiteStore.add_usage`). The flush runs on
the store's own thread, off the event loop, but it still takes CPU from the process and holds the
database's write lock; this puts a number on what the detail rows add.

What is measured: `SQLiteStore.add_usage` on a real store file (WAL, synchronous=NORMAL, as the
gateway opens it) in a temporary directory, for

* `accounts only`: the account rows alone (what a flush wrote before), and
* `accounts + detail`: the same plus the detail rows, given as `KeyUsageRow`s as
  `Limits.drain_detail` gives them, and as plain tuples (what `add_usage` converts them to).

Steady state: the rows exist (each flush is the day's Nth), so every statement is an upsert that
updates. Each figure is the best of several repeats (the machines are shared and noisy). The per-
request figure assumes `--requests` calls per flush (say 1,000 calls/s and a 1 s flush).

Usage::

    python benchmarks/usage_flush.py [--accounts 50] [--detail 200] [--requests 1000] [--flushes 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clexproxy.store.base import KeyUsageRow, UsageRow
from clexproxy.store.sqlite import SQLiteStore

REPEATS = 5
MODELS = ("gpt-4o-mini", "claude-haiku", "llama-3.1-8b", "mistral-small")


def rows(accounts: int, detail: int, day: int) -> tuple[list[UsageRow], list[KeyUsageRow]]:
    """`accounts` account rows and `detail` key x model rows spread over them (two keys each, then models)."""
    account_rows: list[UsageRow] = [(a, day, 30, 3, 900, 300) for a in range(1, accounts + 1)]
    detail_rows = [
        KeyUsageRow(1 + i % accounts, 1000 + (i // accounts) % 2 * accounts + i % accounts,
                    MODELS[(i // (2 * accounts)) % len(MODELS)], day, 10, 1, 300, 100)
        for i in range(detail)
    ]
    assert len(set((r[0], r[1], r[2]) for r in detail_rows)) == detail, "detail rows must be distinct"
    return account_rows, detail_rows


def best_us(flush: Callable[[], None], flushes: int) -> float:
    """The best mean of `REPEATS` runs of `flushes` flushes, in µs per flush."""
    flush()  # the first flush of the day inserts; every timed one updates
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(flushes):
            flush()
        best = min(best, (time.perf_counter() - start) / flushes)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=50, help="account rows per flush")
    parser.add_argument("--detail", type=int, default=200, help="key x model rows per flush")
    parser.add_argument("--requests", type=int, default=1000, help="calls per flush, for the per-request figure")
    parser.add_argument("--flushes", type=int, default=200, help="flushes per timed run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    account_rows, detail_named = rows(args.accounts, args.detail, day=20_000)
    detail_plain = [tuple(r) for r in detail_named]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore.in_data_dir(tmp)
        try:
            for a in range(1, args.accounts + 1):
                store.create_account(f"account-{a}", "pro")
            results["accounts only"] = best_us(lambda: store.add_usage(account_rows), args.flushes)
            results["accounts + detail (KeyUsageRow)"] = best_us(
                lambda: store.add_usage(account_rows, detail_named), args.flushes
            )
            results["accounts + detail (plain tuples)"] = best_us(
                lambda: store.add_usage(account_rows, detail_plain), args.flushes  # type: ignore[arg-type]
            )
        finally:
            store.close()

    if args.json:
        print(json.dumps({
            "accounts": args.accounts, "detail": args.detail, "requests_per_flush": args.requests,
            "us_per_flush": results,
            "us_per_request": {k: v / args.requests for k, v in results.items()},
        }, indent=2))
        return
    print(f"SQLite add_usage, {args.accounts} account rows, {args.detail} detail rows, "
          f"{args.requests} requests per flush (best of {REPEATS} x {args.flushes} flushes)")
    base = results["accounts only"]
    for name, us in results.items():
        extra = "" if name == "accounts only" else f"   (+{us - base:8.1f} µs, x{us / base:.2f})"
        print(f"  {name:34s} {us:9.1f} µs/flush  {us / args.requests:7.3f} µs/request{extra}")


if __name__ == "__main__":
    main()
