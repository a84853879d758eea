"""`token_count`: the estimate's error on the shipped corpus stays within what `benchmarks/token_count_error`
measured (deterministic: the corpus and its true counts are files), golden counts of small texts, and
`estimate_chat`'s non-text costs (messages, images, tool calls, tools).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson

from clexproxy.protocols.messages import count_tokens
from clexproxy.protocols.token_count import IMAGE_TOKENS, MESSAGE_TOKENS, TOOLS_TOKENS, estimate, estimate_chat

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "token_count_error.py"
MEAN_BOUND = 6.0  # measured 5.79 % mean absolute error
WORST_BOUND = 31.0  # measured 30.16 % (prose-12, German compounds)


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_count_error", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_error_within_the_measured_bound() -> None:
    module = bench()
    samples = module.load()
    assert len(samples) >= 40
    assert {sample["kind"] for sample in samples} >= {"prose", "code", "json", "cjk", "numbers", "chat"}
    result = module.measure(samples)
    assert result["mean_abs_pct_error"] <= MEAN_BOUND
    assert result["worst_pct_error"] <= WORST_BOUND


def test_corpus_counts_match_samples() -> None:
    corpus = SCRIPT.parent / "token_corpus"
    ids = [json.loads(line)["id"] for line in (corpus / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = [json.loads(line) for line in (corpus / "counts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert ids == [row["id"] for row in counts]
    assert all(type(row["tokens"]) is int and row["tokens"] > 0 for row in counts)


def test_script_prints_its_figures() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--json"], capture_output=True, check=True, text=True)
    figures = json.loads(result.stdout)
    assert figures["samples"] == 57 and figures["mean_abs_pct_error"] <= MEAN_BOUND


def test_golden_estimates() -> None:
    assert estimate("") == 0
    assert estimate("Hello, world!") == 5  # 2 words, 2 punctuation runs, a space
    assert estimate("Hello world") == 3
    assert estimate("12345") == 3
    assert estimate("人工智能") == 4
    assert estimate("🎉") == 3
    assert estimate("internationalization") == 3


def test_estimate_chat_costs() -> None:
    text = [{"role": "user", "content": "Hello world"}]
    assert estimate_chat(text, []) == MESSAGE_TOKENS + 3
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                                          {"type": "text", "text": "Hello world"}]}]
    assert estimate_chat(image, []) == MESSAGE_TOKENS + IMAGE_TOKENS + 3
    calls = [{"role": "assistant", "content": None,
              "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    assert estimate_chat(calls, []) == MESSAGE_TOKENS + estimate("f") + estimate("{}") == MESSAGE_TOKENS + 4
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert estimate_chat(text, tools) == MESSAGE_TOKENS + 3 + TOOLS_TOKENS + estimate(orjson.dumps(tools).decode())


def test_count_tokens_of_a_messages_body() -> None:
    body = {"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "Hello world"}]}
    assert count_tokens(body) == 2 * MESSAGE_TOKENS + estimate("Be brief.") + 3
    tool = {"name": "f", "input_schema": {"type": "object"}}
    with_tool = count_tokens({**body, "tools": [tool]})
    assert with_tool > count_tokens(body) + TOOLS_TOKENS
