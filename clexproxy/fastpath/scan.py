"""The lean connection's scan of a request head: the compiled `_scan`, or its twin `_scan_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("request_head",)

INCOMPLETE = 0  # what `request_head` returns for a head not yet whole (both implementations' INCOMPLETE)

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._scan_py import request_head
else:
    try:
        from clexproxy.fastpath._scan import request_head
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._scan", exc) from exc
