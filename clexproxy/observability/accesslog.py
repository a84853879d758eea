"""Logging: one structured line per request, as JSON or as key=value text, on stdout.

The access line carries ids and numbers only: the request id, account and key ids (never a
key), the endpoint and the api (the protocol the client spoke), model, provider, status,
credits, tokens and durations — never a prompt, a key or a provider credential.

Access lines skip the `logging` machinery (a record, handlers, a lock and a flush per line cost
more than the rest of the line): `AccessLog` formats each line in place and a timer writes the
batch every `FLUSH_SECONDS`, and at shutdown. Other log records go through `logging` with the
same formats (`configure_logging`).

A text line must not be forgeable by what a client sends (an X-Request-Id with spaces and
`key=value` pairs, a path with CR, ESC sequences or raw bytes), so every string value that is
not plain (printable ASCII without a space, a quote or a backslash) is written quoted, with
escapes (`text_value`): a line always splits into the pairs the gateway wrote, one line per
request. The common values need no quoting and cost one cheap check: our own request ids, and
catalog names, checked once each (`_plain`). The JSON format is safe by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from typing import Any, BinaryIO

import orjson

from clexproxy.outcome import CallOutcome

ACCESS = logging.getLogger("clexproxy.access")

# Written as is in a text line: printable ASCII but the space, the double quote and the backslash.
_NEEDS_QUOTES = re.compile(r'[^!#-\[\]-~]')
# Escaped inside quotes: the quote and the backslash, and everything but printable ASCII.
_ESCAPED = re.compile(r'[^ !#-\[\]-~]')


def escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\" + char if char == '"' or char == "\\" else escape_char(char)


def text_value(value: str) -> str:
    """`value` as a text log line carries it: as is when plain, else in double quotes with escapes.

    Plain is printable ASCII without a space, `"` or `\\`; the empty string is `""`. Inside the
    quotes `"` and `\\` are backslashed and every other byte outside printable ASCII is a `\\xNN`
    (`\\uNNNN` beyond Latin-1), so the line stays one line of ASCII whatever the client sent.
    """
    if value and _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + _ESCAPED.sub(_escape, value) + '"'


# Catalog names (models, providers) and the code's constants as text lines carry them, each checked once.
# Only names from the configuration and the code land here, never a client's bytes; the cap is a backstop.
_PLAIN: dict[str, str] = {}
_PLAIN_MAX = 4096


def _plain(value: str) -> str:
    out = _PLAIN.get(value)
    if out is None:
        out = text_value(value)
        if len(_PLAIN) < _PLAIN_MAX:
            _PLAIN[value] = out
    return out



def call_fields(call: CallOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": call.request_id,
        "account_id": call.account_id,
        "key_id": call.key_id,
        "endpoint": call.endpoint,
        "api": call.api,
        "model": call.model,
        "provider": call.provider or None,
        "stream": call.stream,
        "status": call.status,
        "credits": call.credits_charged,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "duration_ms": round(call.total_seconds * 1000, 3),
        "overhead_ms": round(call.overhead_seconds * 1000, 3),
        "upstream_ms": round(call.upstream_seconds * 1000, 3),
    }
    if call.error_code:
        fields["error"] = call.error_code
    if call.limit:
        fields["limit"] = call.limit
    if call.credits_refunded:
        fields["refunded"] = call.credits_refunded
    if call.first_token_at is not None:
        fields["ttft_ms"] = round((call.first_token_at - call.started) * 1000, 3)
    if call.fallback:
        fields["fallback_from"] = call.model
        fields["served_model"] = call.served_model
    if call.retries:
        fields["retries"] = call.retries
    if call.disconnected:
        fields["client_disconnected"] = True
    return fields


def call_text(call: CallOutcome) -> str:
    """`call_fields` as `key=value` pairs, in the same order, without building the dict.

    The text line is the default and is written for every call; building the dict and joining
    its pairs cost several times this single format (tests hold the two to the same values).
    Milliseconds always show three decimals here (`12.500`), which formats faster than the
    shortest repr of a rounded float (`12.5`) that the JSON line carries. Strings go through
    `text_value`: the request id may be the client's, the rest are names from the catalog.
    """
    total = call.finished_at - call.started
    upstream = call.upstream_seconds
    overhead = total - upstream if total > upstream else 0.0
    account_id, key_id = call.account_id, call.key_id
    rid = call.request_id
    if not (rid.isidentifier() and rid.isascii()):  # ours (`req_<hex>_<hex>`) pass
        rid = text_value(rid)
    plain = _PLAIN
    model = plain.get(call.model) or _plain(call.model)
    provider = call.provider
    provider = (plain.get(provider) or _plain(provider)) if provider else "-"
    text = (  # the endpoint and the api are the handlers' constants, never data
        f"request_id={rid} account_id={'-' if account_id is None else account_id} "
        f"key_id={'-' if key_id is None else key_id} endpoint={call.endpoint} api={call.api} "
        f"model={model} provider={provider} stream={call.stream} status={call.status} "
        f"credits={call.credits_charged} prompt_tokens={call.prompt_tokens} completion_tokens={call.completion_tokens} "
        f"duration_ms={total * 1000:.3f} overhead_ms={overhead * 1000:.3f} upstream_ms={upstream * 1000:.3f}"
    )
    if call.error_code:
        text += f" error={_plain(call.error_code)}"
    if call.limit:
        text += f" limit={_plain(call.limit)}"
    if call.credits_refunded:
        text += f" refunded={call.credits_refunded}"
    if call.first_token_at is not None:
        text += f" ttft_ms={(call.first_token_at - call.started) * 1000:.3f}"
    if call.fallback:
        text += f" fallback_from={model} served_model={_plain(call.served_model)}"
    if call.retries:
        text += f" retries={call.retries}"
    if call.disconnected:
        text += " client_disconnected=True"
    return text


QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: DEBUG, not INFO
FLUSH_SECONDS = 0.2
MAX_BUFFERED = 512  # lines; a burst beyond this is written at once


class AccessLog:
    """Buffered access lines for one process; `flush` runs on a timer and at shutdown."""

    def __init__(self, stream: BinaryIO | None = None, fmt: str = "text") -> None:
        self._stream = stream
        self._json = fmt == "json"
        self._lines: list[bytes] = []
        self._stamp_second = -1
        self._stamp = ""
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _out(self) -> BinaryIO:
        return self._stream if self._stream is not None else sys.stdout.buffer

    def _line(self, level: str, fields: dict[str, Any]) -> bytes:
        if self._json:
            doc = {"ts": round(time.time(), 6), "level": level.lower(), "logger": ACCESS.name, **fields}
            return orjson.dumps(doc) + b"\n"
        pairs = " ".join([
            f"{k}={text_value(v) if isinstance(v, str) else '-' if v is None else v}" for k, v in fields.items()
        ])
        return self._text_line(level, pairs)

    def _text_line(self, level: str, pairs: str) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:  # one strftime a second, not one a line
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return f"{self._stamp},{int(now % 1 * 1000):03d} {level} {ACCESS.name} {pairs}\n".encode()

    def call(self, call: CallOutcome) -> None:
        if ACCESS.isEnabledFor(logging.INFO):
            if self._json:
                self._append(self._line("INFO", call_fields(call)))
            else:
                self._append(self._text_line("INFO", call_text(call)))

    def request(self, request_id: str, method: str, path: str, status: int, started: float) -> None:
        """The access line of a request that is not a proxied call (models, pricing, admin, probes, errors).

        `path` is the path as sent, still percent-encoded (`request.rel_url.raw_path`), without the
        query string (which may carry a credential); the text line quotes it when it must.
        """
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if ACCESS.isEnabledFor(level):
            fields = {
                "request_id": request_id,
                "method": method,
                "path": path[:200],
                "status": status,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            }
            self._append(self._line(logging.getLevelName(level), fields))

    def _append(self, line: bytes) -> None:
        self._lines.append(line)
        if len(self._lines) >= MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            out = self._out()
            out.write(b"".join(lines))
            out.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="clexproxy-access-log")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        self.flush()

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_SECONDS)
            self.flush()
