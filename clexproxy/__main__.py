"""`python -m clexproxy` is the same program as the `clexproxy` console script."""

from __future__ import annotations

from clexproxy.cli import main

if __name__ == "__main__":
    main()
