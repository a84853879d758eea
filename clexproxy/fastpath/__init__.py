"""The one import point for the hot paths: the compiled `_fastpath`, or its pure-Python twin on request.

A missing extension is an error, not a reason to fall back quietly: the twin is several times
slower, and a gateway that lost its extension in a bad build would only show it as latency.
Running pure is an explicit choice, ``CLEXPROXY_NO_EXTENSIONS=1`` (any non-empty value but
"0"), the same switch setup.py reads. Type checkers always see the twin, whose annotations
are the reference for both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = (
    "NO_EXTENSIONS",
    "USING_EXTENSION",
    "BucketResult",
    "CreditLedger",
    "KeyEntry",
    "KeyTable",
    "SSEEvent",
    "SSEParser",
    "TokenBuckets",
    "has_usage",
    "hash_key",
    "key_format_ok",
    "plain_request",
)

NO_EXTENSIONS: bool = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")
USING_EXTENSION: bool

if TYPE_CHECKING or NO_EXTENSIONS:
    from clexproxy._fastpath_py import (
        BucketResult,
        CreditLedger,
        KeyEntry,
        KeyTable,
        SSEEvent,
        SSEParser,
        TokenBuckets,
        has_usage,
        hash_key,
        key_format_ok,
        plain_request,
    )

    USING_EXTENSION = False
else:
    try:
        from clexproxy._fastpath import (
            BucketResult,
            CreditLedger,
            KeyEntry,
            KeyTable,
            SSEEvent,
            SSEParser,
            TokenBuckets,
            has_usage,
            hash_key,
            key_format_ok,
            plain_request,
        )
    except ImportError as exc:
        raise ImportError(
            "clexproxy's compiled extension clexproxy._fastpath is not importable "
            f"({exc}). Build it (`pip install -e .` or `python setup.py build_ext --inplace`), "
            "or set CLEXPROXY_NO_EXTENSIONS=1 to run on the slower pure-Python implementation."
        ) from exc

    USING_EXTENSION = True
