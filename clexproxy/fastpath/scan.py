"""Temporary selector (being split per concept)."""

from __future__ import annotations

from clexproxy.fastpath import plain_request

__all__ = ("plain_request",)
