"""Waiting for the operator's stop: SIGINT or SIGTERM, shared by the gateway and the demo upstream."""

from __future__ import annotations

import asyncio
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def wait_for_stop_signal() -> int:
    """Return the number of the first SIGINT/SIGTERM received, without killing the loop mid-request."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def stop(signum: int) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in STOP_SIGNALS:
        if sys.platform == "win32":  # the Windows event loops have no add_signal_handler
            signal.signal(signum, lambda s, _frame: loop.call_soon_threadsafe(stop, s))
        else:
            loop.add_signal_handler(signum, stop, signum)
    try:
        return await received
    finally:
        if sys.platform != "win32":
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
