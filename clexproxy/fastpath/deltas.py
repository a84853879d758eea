"""The text of text-only OpenAI stream chunks without parsing them: the compiled `_deltas`, or its twin `_deltas_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("text_delta", "text_run")

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._deltas_py import text_delta, text_run
else:
    try:
        from clexproxy.fastpath._deltas import text_delta, text_run
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._deltas", exc) from exc
