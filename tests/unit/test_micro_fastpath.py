"""benchmarks/micro_fastpath.py, run as people run it: ``--quick --json`` in a subprocess.

Why: the compiled-versus-twin numbers in benchmarks/RESULTS.md come from this script, and a row that silently
dropped out or timed nothing (zero, negative, infinite) would make the comparison meaningless. Timing itself is never
asserted, not even the ratio: a test that fails because the machine was busy teaches people to ignore failures.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "micro_fastpath.py"
NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")

OPERATIONS = {
    "sse_events",
    "sse_tcp",
    "has_usage_content",
    "has_usage_usage",
    "bucket_acquire",
    "ledger_reserve_refund",
    "key_lookup_hit",
    "key_lookup_miss",
    "request_head",
    "text_delta",
}
SSE = {"sse_events", "sse_tcp"}

pytestmark = pytest.mark.skipif(
    NO_EXTENSIONS, reason="CLEXPROXY_NO_EXTENSIONS is set: there is no compiled module to compare the twin with"
)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One quick run shared by the tests below: it is the slow part."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_every_operation_has_positive_numbers_for_both(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert set(report["results"]) == OPERATIONS
    for name, row in report["results"].items():
        assert isinstance(row["label"], str) and row["label"]
        for impl in ("compiled", "pure"):
            entry = row[impl]
            assert positive(entry["ns_per_op"]), (name, impl, entry)
            if name in SSE:
                assert positive(entry["ns_per_event"]), (name, impl, entry)
                assert positive(entry["mb_per_s"]), (name, impl, entry)
        assert positive(row["speedup"]), (name, row)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("micro_fastpath", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_markdown_table_has_a_row_per_operation(report: dict[str, Any]) -> None:
    table = load_script().markdown(report).splitlines()
    assert table[0] == "| operation | compiled | pure Python | speed-up |"
    assert len(table) == 2 + len(OPERATIONS)
    assert all(line.startswith("| ") and line.endswith("x |") for line in table[2:])
