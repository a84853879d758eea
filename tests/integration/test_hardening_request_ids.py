"""Issue 10 item 4: request ids stay unique across the workers of `serve --workers 4 --redis`.

The id prefix was made at import, in the parent, before the fork: every worker issued
`req_<same>_1`, `_2`, ... The instance is the real command in a subprocess (test_scale_out's
`start`), and new connections spread the calls over its four workers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson

from .test_scale_out import CHEAP, WORKERS, Start, new_key, start  # noqa: F401  (`start` is the fixture)

CALLS = 16 * WORKERS


async def _request_id(http: aiohttp.ClientSession, url: str, key: str) -> str:
    body = orjson.dumps({"model": CHEAP, "messages": [{"role": "user", "content": "Hi"}], "stream": False})
    async with http.post(url + "/v1/chat/completions", data=body,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        return resp.headers["X-Request-Id"]


async def test_request_ids_are_unique_across_four_workers(start: Start, tmp_path: Path) -> None:  # noqa: F811
    instance = await start("ids")
    key = new_key(tmp_path / "data", "ids", "pro")  # 200 calls a minute: room for every call here
    await asyncio.sleep(1.0)  # every worker polls the store every 0.1 s
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a new connection per call: any worker may take it
    async with aiohttp.ClientSession(connector=connector) as http:
        ids = await asyncio.gather(*(_request_id(http, instance.url, key) for _ in range(CALLS)))
    assert len(set(ids)) == CALLS, sorted(ids)
    prefixes = {rid.rsplit("_", 1)[0] for rid in ids}
    assert len(prefixes) > 1, f"one worker answered every call, so the ids proved nothing: {prefixes}"
