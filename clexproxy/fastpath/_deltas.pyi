"""Type stub for the compiled `_deltas` extension; `_deltas_py` is its pure-Python twin."""

from typing import Any

__all__ = ("text_delta", "text_run")

def text_delta(data: bytes) -> str | None: ...
def text_run(events: list[Any], start: int) -> tuple[str | None, int]: ...
