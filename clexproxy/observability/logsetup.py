"""Logging setup: every record but the access lines, one per line on stdout, as text or JSON.

`configure_logging` installs one handler on the root logger with the format the settings name
(`--log-format`): `JsonFormatter` shapes a record like a JSON access line, `TextFormatter` like
a text one. The text format escapes what a record's arguments bring from outside (a client's
request id, an upstream's error text), so a record can neither start a line of its own nor
drive a terminal. Timestamps are UTC, as the access lines'.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

from clexproxy.observability.accesslog import escape_char

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """The other log records, one JSON object per line, shaped like the access lines."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _escape_unprintable(text: str, keep: str = "") -> str:
    """`text` with each character that is not printable (but those in `keep`) as a backslash escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else escape_char(c) for c in text)


class TextFormatter(logging.Formatter):
    """The other log records as text, one record per line whatever their arguments hold.

    A message can carry bytes from outside (a client's request id, an upstream's error text):
    its CR, LF, ESC and other unprintable characters are written as escapes, so it can neither
    start a line of its own nor drive a terminal. A traceback keeps its line breaks.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape_unprintable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _escape_unprintable(super().formatException(ei), keep="\n")


def configure_logging(level: str, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.Formatter.converter = time.gmtime
