"""Temporary selector (being split per concept)."""

from __future__ import annotations

from clexproxy.fastpath import BucketResult, CreditLedger, TokenBuckets

__all__ = ("BucketResult", "CreditLedger", "TokenBuckets",)
