"""Who is calling: the in-memory key table and account directory the request path reads.

The store is the source of truth; this is its in-memory image, filled at start and kept
current by `apply` with whatever the store's change feed returns, so a key created or
revoked from the CLI works or stops working within one poll interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from clexproxy.catalog import Catalog, Plan
from clexproxy.errors import AuthenticationFailed
from clexproxy.fastpath.keys import KeyEntry, KeyTable
from clexproxy.store.base import AccountRow, KeyRow

log = logging.getLogger("clexproxy.auth")

BEARER = "Bearer "


@dataclass(slots=True)
class Account:
    id: int
    name: str
    plan: Plan


class Directory:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.keys = KeyTable()
        self.accounts: dict[int, Account] = {}

    def _plan(self, name: str) -> Plan:
        plan = self._catalog.plans.get(name)
        if plan is None:
            # A plan removed from the configuration must not lock its accounts out nor lift their limits.
            plan = min(self._catalog.plans.values(), key=lambda p: p.credits_per_day)
            log.warning("account plan %r is not configured; using %r", name, plan.name)
        return plan

    def apply(self, accounts: Iterable[AccountRow], keys: Iterable[KeyRow]) -> list[Account]:
        """Apply store rows (new or changed); returns the accounts whose plan may have changed."""
        changed: list[Account] = []
        for row in accounts:
            plan = self._plan(row.plan)
            account = self.accounts.get(row.id)
            if account is None:
                account = self.accounts[row.id] = Account(row.id, row.name, plan)
            else:
                account.name, account.plan = row.name, plan
            changed.append(account)
        for key in keys:
            if key.revoked_at is None:
                self.keys.add(key.key_hash, key.id, key.account_id)
            else:
                self.keys.remove(key.id)
        return changed

    def authenticate(self, authorization: str | None) -> tuple[KeyEntry, Account]:
        if not authorization:
            raise AuthenticationFailed("Missing API key. Send it as 'Authorization: Bearer clex_...'.")
        if not authorization.startswith(BEARER):
            scheme = authorization.split(" ", 1)[0]
            if scheme.lower() != "bearer":
                raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer clex_...'.")
            authorization = BEARER + authorization[len(scheme) + 1 :]
        token = authorization[len(BEARER) :].strip()
        entry = self.keys.lookup(token)
        if entry is None:
            raise AuthenticationFailed("Invalid or revoked API key.")
        account = self.accounts.get(entry.account_id)
        if account is None:
            raise AuthenticationFailed("Invalid or revoked API key.")
        return entry, account
