"""The demo upstream's embeddings: a deterministic unit vector per input, as floats or base64.

The ``input`` shapes OpenAI accepts (a string, strings, one token array, token arrays) are checked;
``dimensions`` and ``encoding_format`` are honoured. Both encodings carry the same float32 numbers.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from functools import lru_cache
from typing import Any, Final

import orjson

from clexproxy.demo.errors import bad_request

DEFAULT_EMBEDDING_DIMENSIONS: Final = 16
MAX_DIMENSIONS: Final = 8192
_CACHED_DIMENSIONS_MAX: Final = 256


_EmbeddingInput = str | tuple[int, ...]


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_array(value: list[Any]) -> tuple[int, ...]:
    if not value or not all(_is_token(item) for item in value):
        raise bad_request("token arrays in 'input' must be non-empty arrays of integers", "invalid_value", "input")
    return tuple(value)


def embedding_inputs(value: object) -> list[_EmbeddingInput]:
    """OpenAI's accepted ``input`` shapes: a string, strings, one token array, or token arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'input' must be a string, an array of strings or an array of token arrays", "invalid_value", "input"
        )
    if all(_is_token(item) for item in value):
        return [tuple(value)]
    if all(isinstance(item, str) for item in value):
        return list(value)
    if all(isinstance(item, list) for item in value):
        return [_token_array(item) for item in value]
    raise bad_request("'input' must not mix strings, integers and arrays", "invalid_value", "input")


def _embedding(item: _EmbeddingInput, dimensions: int) -> tuple[tuple[float, ...], str]:
    """The vector for ``item``; small dimensions are cached (repeated benchmark inputs), large ones are not."""
    if dimensions <= _CACHED_DIMENSIONS_MAX:
        return _cached_embedding(item, dimensions)
    return _compute_embedding(item, dimensions)


def _compute_embedding(item: _EmbeddingInput, dimensions: int) -> tuple[tuple[float, ...], str]:
    """A deterministic unit vector for ``item`` as float32 values, and the same bytes base64-encoded.

    Values are rounded through float32 so the ``float`` and ``base64`` encodings carry exactly the same numbers.
    """
    raw = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else orjson.dumps(item)
    state = (zlib.crc32(raw) ^ (dimensions * 0x9E3779B1)) & 0x7FFFFFFF
    values: list[float] = []
    for _ in range(dimensions):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        values.append((state >> 7) / float(1 << 23) - 1.0)
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in values))
    return struct.unpack(f"<{dimensions}f", packed), base64.b64encode(packed).decode("ascii")


_cached_embedding: Final = lru_cache(maxsize=1024)(_compute_embedding)


def _input_tokens(item: _EmbeddingInput) -> int:
    return max(1, len(item.split()) if isinstance(item, str) else len(item))


def embeddings_payload(model: str, inputs: list[_EmbeddingInput], dimensions: int, as_base64: bool) -> bytes:
    data = []
    for index, item in enumerate(inputs):
        floats, encoded = _embedding(item, dimensions)
        data.append({"object": "embedding", "index": index, "embedding": encoded if as_base64 else floats})
    prompt_tokens = sum(_input_tokens(item) for item in inputs)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def encoding_is_base64(body: dict[str, Any]) -> bool:
    encoding = body.get("encoding_format")
    if encoding is None or encoding == "float":
        return False
    if encoding == "base64":
        return True
    raise bad_request("'encoding_format' must be 'float' or 'base64'", "invalid_value", "encoding_format")
