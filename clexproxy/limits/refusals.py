"""Which Authorization headers were refused a moment ago: the screen's hint, never its decision.

The full path (`handle`) notes what it refuses and the screen reads it; both reach it through
`Gateway.refusals`, so it lives below both, with the limits.

Screening a call (`Screen`) means authenticating it and looking at its per-minute
bucket before `handle` runs; for a call that is then admitted, that work is done a
second time on the full path. Refusals come in floods from the same few keys, so the screen
looks only at calls whose exact Authorization header was refused within the last `ttl`
seconds: every other call pays one hash and one dict lookup. A hash collision only sends an
admitted call through the screen, which then lets it pass.
"""

from __future__ import annotations

import time

TTL_SECONDS = 1.0
MAX_ENTRIES = 65_536  # a flood of distinct bad keys clears the table instead of growing it


class RecentRefusals:
    __slots__ = ("_latest", "_until")

    def __init__(self) -> None:
        self._until: dict[int, float] = {}
        self._latest = 0.0  # when the last entry expires: past it, the whole table is stale

    def active(self) -> bool:
        """Whether any refusal is still remembered; a table whose entries have all expired is emptied."""
        if not self._until:
            return False
        if time.monotonic() > self._latest:
            self._until.clear()
            return False
        return True

    def note(self, authorization: str | None, now: float) -> None:
        """`authorization` was just refused (bad key or spent per-minute limit)."""
        until = self._until
        if len(until) >= MAX_ENTRIES:
            until.clear()
        until[hash(authorization)] = self._latest = now + TTL_SECONDS

    def forget(self, authorization: str | None) -> None:
        """`authorization` was just admitted: its calls go straight to the full path again."""
        self._until.pop(hash(authorization), None)

    def seen(self, authorization: str | None, now: float) -> bool:
        key = hash(authorization)
        until = self._until.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[key]  # expired: the table empties again once a flood is over
        return False

    def __len__(self) -> int:
        return len(self._until)
