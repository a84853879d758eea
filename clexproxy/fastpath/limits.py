"""Rate-limit buckets and the daily credit ledger: the compiled `_limits`, or its twin `_limits_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clexproxy.fastpath import NO_EXTENSIONS, missing_build

__all__ = ("BucketResult", "CreditLedger", "TokenBuckets")

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy.fastpath._limits_py import BucketResult, CreditLedger, TokenBuckets
else:
    try:
        from clexproxy.fastpath._limits import BucketResult, CreditLedger, TokenBuckets
    except ImportError as exc:
        raise missing_build("clexproxy.fastpath._limits", exc) from exc
