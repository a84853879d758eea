"""Type stub for the compiled `_deltas` extension; `_deltas_py` is its pure-Python twin."""

__all__ = ("text_delta",)

def text_delta(data: bytes) -> str | None: ...
