"""HTTP/1.1 answer framing for the upstream connections: the compiled `_h1`, or its twin `_h1_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("ResponseError", "ResponseParser")

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._h1_py import ResponseError, ResponseParser
else:
    try:
        from clexproxy.fastpath._h1 import ResponseError, ResponseParser
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._h1", exc) from exc
