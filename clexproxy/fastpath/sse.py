"""Server-Sent Events splitting and the usage pre-filter: the compiled `_sse`, or its twin `_sse_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("SSEEvent", "SSEParser", "has_usage")

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._sse_py import SSEEvent, SSEParser, has_usage
else:
    try:
        from clexproxy.fastpath._sse import SSEEvent, SSEParser, has_usage
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._sse", exc) from exc
