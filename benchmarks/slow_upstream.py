"""An upstream that answers every request with a static chat completion after a fixed delay (`make bench`'s (j)).

Why a mock of its own: the sustained-load method of the public gateway boards puts a fixed upstream
latency (20 ms) behind the gateway, so that connections pile up as they do in production and the
gateway's ceiling shows as requests/s at a bounded p99. The mock must stay far above that ceiling
on a core it shares with the load generator, so it is a bare asyncio protocol on uvloop: no
framework, one prebuilt answer, one timer per request. (j)'s "direct" row measures its own ceiling.

It reads HTTP/1.1 requests with a Content-Length body (what the gateways send upstream), in order,
pipelined or not; anything else gets a 400 and the connection closes.

    python benchmarks/slow_upstream.py --port 9000 [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import uvloop

ANSWER = json.dumps({
    "id": "chatcmpl-slow", "object": "chat.completion", "created": 1700000000, "model": "meta/llama-3.1-8b-instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)) + ANSWER
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class SlowUpstream(asyncio.Protocol):
    """One connection: each whole request is answered `delay` seconds after it arrived, in arrival order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.refuse()
                return
            length = body_length(bytes(self.buffer[:end]))
            if length is None:
                self.refuse()
                return
            whole = end + 4 + length
            if len(self.buffer) < whole:
                return
            del self.buffer[:whole]
            # Timers with one delay fire in the order they were set: answers stay in request order.
            self.loop.call_later(self.delay, self.answer)

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)

    def refuse(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD_REQUEST)
            self.transport.close()


def body_length(head: bytes) -> int | None:
    """The Content-Length of a request head (0 without one); None for a chunked body or a bad length."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return None
            length = int(value)
    return length


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowUpstream(delay), "127.0.0.1", port, backlog=4096, reuse_port=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
