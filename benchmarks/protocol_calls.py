"""A fixed number of calls of one ingress, for `instructions_per_request.sh API=...`.

Why not `load.py`: it speaks chat completions only, and judges a stream by chat's `[DONE]`. Here a
call succeeds when its status is 200 and its body is read to the end; nothing is timed, because
callgrind counts the instructions.

    python benchmarks/protocol_calls.py --port P --key K --api responses --requests 1000 [--stream] [--tokens N]
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import orjson

MODEL = "meta/llama-3.1-8b-instruct"
PROMPT = "Say hello."
MESSAGES = [{"role": "user", "content": PROMPT}]
BODIES = {
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
    "responses": ("/v1/responses", {"model": MODEL, "input": PROMPT}),
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 256, "messages": MESSAGES}),
}


async def run(port: int, key: str, api: str, requests: int, stream: bool, tokens: int | None,
              concurrency: int) -> None:
    path, body = BODIES[api]
    data = orjson.dumps({**body, "stream": stream})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if tokens is not None:
        headers["x-demo-tokens"] = str(tokens)
    url = f"http://127.0.0.1:{port}{path}"
    left = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=data) as response:
                answer = await response.read()
                if response.status != 200:
                    raise SystemExit(f"{api}: HTTP {response.status}: {answer[:300]!r}")

    async with aiohttp.ClientSession(headers=headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--api", choices=sorted(BODIES), default="chat")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--tokens", type=int, default=None, help="completion tokens asked of the demo upstream")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.port, args.key, args.api, args.requests, args.stream, args.tokens, args.concurrency))


if __name__ == "__main__":
    main()
