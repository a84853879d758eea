"""Type stub for the compiled `_scan` extension; `_scan_py` is its pure-Python twin."""

__all__ = ("plain_request",)

def plain_request(data: bytes) -> tuple[bytes, bytes | None, bytes | None] | None: ...
