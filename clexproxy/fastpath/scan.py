"""The screen's scan of a whole plain request: the compiled `_scan`, or its twin `_scan_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("plain_request",)

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._scan_py import plain_request
else:
    try:
        from clexproxy.fastpath._scan import plain_request
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._scan", exc) from exc
