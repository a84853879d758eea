"""What a client received of an answer the server cut short (`read_until_cut`), for the tests of a dropped stream.

Why a helper: a dropped connection may reach the client as a clean end or as aiohttp's `ClientPayloadError`,
depending on where the cut fell in the chunked framing; a test of the drop asserts on the bytes that got through
either way, so the reading that tolerates both is written once.
"""

from __future__ import annotations

import aiohttp


async def read_until_cut(response: aiohttp.ClientResponse) -> bytes:
    """Every byte of `response`'s body that arrived before the connection ended, cleanly or not."""
    raw = b""
    try:
        async for piece in response.content.iter_any():
            raw += piece
    except aiohttp.ClientPayloadError:
        pass
    return raw
