"""Type stub for the compiled `_scan` extension; `_scan_py` is its pure-Python twin."""

__all__ = ("request_head",)

INCOMPLETE: int
MAX_LEAN_HEAD: int
MAX_LEAN_HEADERS: int

def request_head(
    data: bytes,
) -> tuple[int, str, list[tuple[str, str]], int, bool, str | None, str | None, bool] | int | None: ...
