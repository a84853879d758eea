"""Who is calling: the in-memory key table and account directory the request path reads.

The store is the source of truth; this is its in-memory image, filled at start and kept
current by `apply` with whatever the store's change feed returns, so a key created or
revoked from the CLI works or stops working within one poll interval.

A key its creator limited (an expiry, a daily credit cap, a model allow-list) has a `KeyPolicy`
in `Directory.policies`, keyed by key id; a key without limits has none, so the request path
pays one dict miss for them. A capped key's budget is metered by the limits as an account of
its own (`KeyPolicy.budget`), in an id space no account reaches (`KEY_BUDGET_BASE` + key id), so
it is as exact across workers as an account's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from clexproxy.catalog import Catalog, Plan
from clexproxy.errors import AuthenticationFailed
from clexproxy.fastpath.keys import KeyEntry, KeyTable
from clexproxy.store.base import AccountRow, KeyRow

log = logging.getLogger("clexproxy.auth")

BEARER = "Bearer "
KEY_BUDGET_BASE = 1 << 40  # a capped key's budget id: KEY_BUDGET_BASE + key id, beyond any account id
CONSOLE_KEY_ID = 0  # the key id of the console's own calls (the signed-in API Explorer), which no key made


@dataclass(slots=True)
class Account:
    id: int
    name: str
    plan: Plan


def iso_utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The limits a key's creator set (`KeyRow`), as the request path checks them.

    `budget` is the daily cap metered as an account of its own: id `KEY_BUDGET_BASE` + key id, the
    account's plan with the cap as its credits per day (None: the account's budget alone).
    """

    key_id: int
    account_id: int
    expires_at: float | None
    models: frozenset[str] | None
    budget: Account | None

    def expired(self, wall: float) -> AuthenticationFailed | None:
        """The 401 for a key past its expiry at `wall`, else None."""
        if self.expires_at is None or wall < self.expires_at:
            return None
        return AuthenticationFailed(f"This API key expired at {iso_utc(self.expires_at)}.")


def key_budget(key_id: int, cap: int, account: Account) -> Account:
    """A capped key's budget: the account's plan with the cap as its daily credits."""
    return Account(KEY_BUDGET_BASE + key_id, f"{account.name}/key {key_id}", replace(account.plan, credits_per_day=cap))


class Directory:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.keys = KeyTable()
        self.accounts: dict[int, Account] = {}
        self.policies: dict[int, KeyPolicy] = {}  # key id -> its limits, for the keys that have any
        self.names: dict[int, str] = {}  # key id -> its name, for the keys that have one
        self._limited: dict[int, KeyRow] = {}  # the rows of `policies`, to derive them again on a plan change

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
            if key.name and key.revoked_at is None:
                self.names[key.id] = key.name
            else:
                self.names.pop(key.id, None)
            limited = key.expires_at is not None or key.daily_cap is not None or key.models is not None
            if limited and key.revoked_at is None:
                self._limited[key.id] = key
                self._derive(key)
            else:
                self._limited.pop(key.id, None)
                self.policies.pop(key.id, None)
        if changed and self._limited:
            ids = {account.id for account in changed}
            for key in self._limited.values():
                if key.account_id in ids:
                    self._derive(key)
        return changed

    def _derive(self, key: KeyRow) -> None:
        account = self.accounts.get(key.account_id)
        budget = None
        if key.daily_cap is not None and account is not None:
            budget = key_budget(key.id, key.daily_cap, account)
        models = frozenset(key.models) if key.models is not None else None
        self.policies[key.id] = KeyPolicy(key.id, key.account_id, key.expires_at, models, budget)

    def budgets(self) -> list[Account]:
        """The capped keys' budgets (what the limits meter beside the accounts)."""
        return [policy.budget for policy in self.policies.values() if policy.budget is not None]

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
