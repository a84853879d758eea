"""Temporary selector (being split per concept)."""

from __future__ import annotations

from clexproxy.fastpath import SSEEvent, SSEParser, has_usage

__all__ = ("SSEEvent", "SSEParser", "has_usage",)
