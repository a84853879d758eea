"""Official Node clients against the gateway: the openai Node SDK's Responses API and the Vercel AI SDK (text, stream
and an agent's tool round trip, through its openai provider on /v1/responses and its anthropic one on /v1/messages).

The clients are npm packages pinned by the lock file beside the scripts (`make test` runs `npm ci` first);
each script reads the gateway's address and a key from its environment and prints one JSON document of
results, which these tests check. A missing install fails loudly rather than skipping: these are the
clients the issue was about.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from clexproxy.demo.recorder import DemoRecorder

from .conftest import RunningGateway

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
MODEL = "meta/llama-3.3-70b-instruct"  # large: 3 credits
PROMPT = "Hello there!"
NODE_TIMEOUT_S = 150.0  # a bound for a loaded machine, not a timing assertion
pytestmark = pytest.mark.timeout(300)


async def run_script(gw: RunningGateway, key: str, script: str) -> dict[str, Any]:
    """Run one client script against `gw` (in this event loop's own subprocess, so the gateway keeps serving)."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.fail("the Node clients are not installed: run `make node-clients` (npm ci in the Node test folder)",
                    pytrace=False)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "CLEX_BASE_URL": gw.base_url, "CLEX_API_KEY": key, "CLEX_MODEL": MODEL}
    process = await asyncio.create_subprocess_exec(
        node, script, cwd=NODE_DIR, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node {script} did not finish in {NODE_TIMEOUT_S:.0f} s")
    output = stdout.decode(errors="replace")
    assert process.returncode == 0, output + stderr.decode(errors="replace")
    # The results are the last line; a client may print its own warnings before it.
    lines = output.strip().splitlines()
    assert lines and lines[-1].startswith("{"), output + stderr.decode(errors="replace")
    results: dict[str, Any] = orjson.loads(lines[-1])
    return results


def case(results: dict[str, Any], name: str) -> dict[str, Any]:
    """One case's result; a case that threw fails here with the client's own error text."""
    result: dict[str, Any] = results[name]
    assert "error" not in result, f"{name}: {result['error']}"
    return result


async def chat_text(gw: RunningGateway, key: str, messages: list[Any]) -> str:
    completion = await gw.client(key).chat.completions.create(model=MODEL, messages=messages, stream=False)
    content = completion.choices[0].message.content
    assert content
    return content


async def test_openai_node_responses(gw: RunningGateway, key: str) -> None:
    results = await run_script(gw, key, "openai_responses.mjs")
    text = case(results, "text")
    instructed = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    expected = await chat_text(gw, key, instructed)
    assert text["status"] == "completed" and text["model"] == MODEL and text["id"].startswith("resp_")
    assert text["output_text"] == expected and text["output_types"] == ["message"]
    assert text["usage"]["input_tokens"] == 4 and text["usage"]["output_tokens"] == 8
    assert text["credits_remaining"] == "1997"  # the stream after it is charged too: below

    stream = case(results, "stream")
    assert stream["text"] == await chat_text(gw, key, [{"role": "user", "content": PROMPT}])
    types = stream["types"]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    deltas = types[4:-4]  # a read's pieces of text go out as one delta: at most one per demo token
    assert 1 <= len(deltas) <= 8 and deltas == ["response.output_text.delta"] * len(deltas)
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert stream["sequence"] == list(range(len(types)))
    assert stream["status"] == "completed" and stream["usage"]["output_tokens"] == 8
    # Two Responses calls and two chat calls of 3 credits each.
    assert await gw.credits_remaining(key, MODEL) == 2000 - 4 * 3


async def test_vercel_ai_sdk(gw: RunningGateway, key: str, recorder: DemoRecorder) -> None:
    results = await run_script(gw, key, "ai_sdk.mjs")
    expected = await chat_text(gw, key, [{"role": "user", "content": PROMPT}])
    sent = [request.body for request in recorder.requests]
    # Four single calls, two tool round trips of two calls each, then ours: all translated onto chat.
    assert [request.path for request in recorder.requests] == ["/v1/chat/completions"] * 9
    assert [(body["stream"], body.get("max_tokens")) for body in sent[:4]] == [(False, 256), (True, 256)] * 2
    assert all(body["messages"] == [{"role": "user", "content": PROMPT}] for body in sent[:4] + sent[8:])

    for name in ("openai_generate", "openai_stream", "anthropic_generate", "anthropic_stream"):
        result = case(results, name)
        assert result["text"] == expected, name
        assert result["finishReason"] == "stop", name
        usage = result["usage"]
        assert (usage["inputTokens"], usage["outputTokens"]) == (2, 8), name
    assert 1 <= case(results, "openai_stream")["pieces"] <= 8  # at most one piece per demo token
    assert 1 <= case(results, "anthropic_stream")["pieces"] <= 8

    # The agent loop: the demo upstream calls the tool, the SDK runs it and sends the result back.
    for name, (first, second) in (("openai_tools", sent[4:6]), ("anthropic_tools", sent[6:8])):
        result = case(results, name)
        calling, answering = result["steps"]
        assert calling["finishReason"] == "tool-calls", name
        assert calling["toolCalls"] == [{"toolName": "weather", "input": {"city": "alpha"}}], name
        assert calling["toolResults"] == ["Sunny in alpha, 21 C"], name
        assert answering["finishReason"] == "stop" and answering["text"] == result["text"] != "", name
        assert result["totalUsage"]["outputTokens"] == 16, name
        assert [tool["function"]["name"] for tool in first["tools"]] == ["weather"], name
        assert first["messages"] == [{"role": "user", "content": "What is the weather in Paris?"}], name
        call, answer = second["messages"][1:]
        assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "weather", name
        assert answer["role"] == "tool" and answer["tool_call_id"] == call["tool_calls"][0]["id"], name
        assert "Sunny in alpha, 21 C" in str(answer["content"]), name


async def test_node_client_refused_with_a_bad_key(gw: RunningGateway) -> None:
    results = await run_script(gw, "clex-not-a-key", "openai_responses.mjs")
    assert results["text"]["status"] == 401 and results["stream"]["status"] == 401
    with pytest.raises(openai.AuthenticationError):
        await gw.client("clex-not-a-key").responses.create(model=MODEL, input=PROMPT)
