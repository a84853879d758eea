"""`make bench`'s (h) protocols scenario: the bodies it checks are the ones wrk sends, and errors never pass.

Why: (h) compares the Responses and Messages ingress with chat completions by wrk's requests/s. If
the body `check_answer` verifies drifted from the one benchmarks/wrk/chat.lua sends, or a row of
errors could count as met, the figure would say nothing about the translation.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_under_test", ROOT / "benchmarks" / "bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def lua_bodies() -> dict[str, str]:
    """The body templates of chat.lua's `bodies` table, Lua string concatenations joined."""
    text = (ROOT / "benchmarks" / "wrk" / "chat.lua").read_text()
    table = re.search(r"local bodies = \{(.*?)\n\}", text, re.S)
    assert table
    out: dict[str, str] = {}
    for name, parts in re.findall(r"(\w+) = ((?:'[^']*'(?:\s*\.\.\s*)?)+),", table.group(1)):
        out[name] = "".join(re.findall(r"'([^']*)'", parts))
    return out


def test_check_answer_sends_what_wrk_sends() -> None:
    bench = load_bench()
    templates = lua_bodies()
    assert sorted(templates) == ["chat", "messages", "responses"]
    for api, template in templates.items():
        for stream in (False, True):
            sent = json.loads(template.replace("%s", bench.MODEL, 1).replace("%s", "true" if stream else "false"))
            assert json.loads(bench.protocol_body(api, stream)) == sent
    assert json.loads(bench.protocol_body("messages", True)) == {
        "model": "meta/llama-3.1-8b-instruct", "stream": True, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
    }
    assert json.loads(bench.protocol_body("responses", False)) == {
        "model": "meta/llama-3.1-8b-instruct", "stream": False, "input": "Say hello in five words."}


def row(api: str, stream: bool, x_chat: float, non2xx: int = 0, errors: int = 0) -> dict[str, Any]:
    return {"target": f"{api} {'stream' if stream else 'JSON'}", "api": api, "stream": stream, "rps": 1000.0 * x_chat,
            "x_chat": x_chat, "non2xx": non2xx, "errors": errors}


def test_targets_hold_only_for_clean_rows_at_the_ratio() -> None:
    bench = load_bench()
    rows = [row("chat", False, 1.0), row("responses", False, 0.8), row("messages", False, 0.95, non2xx=3),
            row("chat", True, 1.0), row("responses", True, 0.69), row("messages", True, 0.9, errors=1)]
    lines = [line for line in bench.targets_section({"h": rows}) if line.startswith("- (h)")]
    assert lines == [
        "- (h) responses JSON ≥ 0.8 x chat JSON: 0.80 x — met",
        "- (h) messages JSON ≥ 0.8 x chat JSON: 0.95 x (with errors) — not met",
        "- (h) responses stream ≥ 0.7 x chat stream: 0.69 x — not met",
        "- (h) messages stream ≥ 0.7 x chat stream: 0.90 x (with errors) — not met",
    ]


def test_h_is_in_the_default_run() -> None:
    bench = load_bench()
    assert "h" in bench.SCENARIOS
    default = re.search(r'"--only", default="(\w+)"', (ROOT / "benchmarks" / "bench.py").read_text())
    assert default and default.group(1) == "abcdefghij"
    assert re.search(r"^bench: bench-tools\n\t\$\(PY\) benchmarks/bench.py\n", (ROOT / "Makefile").read_text(), re.M)
    assert bench.API_PATHS == {"chat": "/chat/completions", "responses": "/responses", "messages": "/messages"}
