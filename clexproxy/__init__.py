"""clexproxy: an OpenAI-compatible LLM API gateway with exact per-account limits and credits."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
