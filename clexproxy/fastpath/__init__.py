"""The hot paths, one compiled/pure pair per concept, and the one switch that chooses between them.

Each concept has a compiled module (`_sse`, `_limits`, `_keys`, `_scan`, `_deltas`), its pure-Python twin
(`_sse_py`, ...) with the same public API and results, and a tiny selector that callers import
from (`clexproxy.fastpath.sse`, `.limits`, `.keys`, `.scan`, `.deltas`). This package only holds what the
selectors share, so importing it loads no concept.

A missing extension is an error, not a reason to fall back quietly: the twin is several times
slower, and a gateway that lost its extension in a bad build would only show it as latency.
Running pure is an explicit choice, ``CLEXPROXY_NO_EXTENSIONS=1`` (any non-empty value but
"0"), the same switch setup.py reads, and it is read here only. Type checkers always see the
twins, whose annotations are the reference for both.
"""

from __future__ import annotations

import os

__all__ = ("NO_EXTENSIONS", "USING_EXTENSION", "missing_build")

NO_EXTENSIONS: bool = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")
# Whether the selectors hand out compiled code. It follows from the switch alone because a selector
# never falls back: with extensions on, a concept whose build is missing fails its import instead.
USING_EXTENSION: bool = not NO_EXTENSIONS


def missing_build(module: str, exc: ImportError) -> ImportError:
    """The error a selector raises when its compiled `module` cannot be imported (chain it to `exc`)."""
    return ImportError(
        f"clexproxy's compiled extension {module} is not importable "
        f"({exc}). Build it (`pip install -e .` or `python setup.py build_ext --inplace`), "
        "or set CLEXPROXY_NO_EXTENSIONS=1 to run on the slower pure-Python implementation."
    )
