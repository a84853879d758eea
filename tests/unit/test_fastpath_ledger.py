"""Daily credit ledger, on both implementations."""

from __future__ import annotations

from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

DAY = 20_000  # days since the epoch


def ledger_with(limits: ModuleType, limit: int = 100, spent: int = 0, auto_lease: bool = True) -> Any:
    ledger = limits.CreditLedger(auto_lease=auto_lease)
    ledger.set_account(1, limit, DAY, spent)
    return ledger


def usage(ledger: Any) -> list[tuple[int, int, int, int]]:
    """Drained (account, day, credits, calls) deltas; tests that record no tokens see 0 tokens in every row."""
    rows = sorted(ledger.drain_usage())
    assert all(row[4:] == (0, 0) for row in rows)
    return [row[:4] for row in rows]


# --- reserve and refund -------------------------------------------------------------------------


def test_reserve_until_exhausted_is_exact(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100)
    results = [ledger.reserve(1, 5, DAY) for _ in range(25)]
    assert results[:20] == list(range(95, -1, -5))
    assert results[20:] == [-1] * 5
    assert ledger.remaining(1, DAY) == 0
    assert ledger.spent(1) == 100
    assert usage(ledger) == [(1, DAY, 100, 20)]


def test_refused_reservation_changes_nothing(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    assert ledger.reserve(1, 11, DAY) == -1
    assert (ledger.remaining(1, DAY), ledger.spent(1)) == (10, 0)
    assert ledger.drain_usage() == []
    assert ledger.reserve(1, 10, DAY) == 0


def test_zero_cost_is_admitted_and_counted_as_a_call(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=0)
    assert ledger.reserve(1, 0, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1
    assert usage(ledger) == [(1, DAY, 0, 1)]


def test_refund_same_day_restores_credits(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    assert ledger.reserve(1, 10, DAY) == 0
    ledger.refund(1, 10, DAY)
    assert (ledger.remaining(1, DAY), ledger.spent(1)) == (10, 0)
    assert ledger.reserve(1, 4, DAY) == 6
    assert usage(ledger) == [(1, DAY, 4, 1)]


def test_reserve_and_refund_that_cancel_are_omitted_from_usage(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    ledger.reserve(1, 5, DAY)
    ledger.refund(1, 5, DAY)
    assert ledger.drain_usage() == []


def test_negative_amounts_are_rejected(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    with pytest.raises(ValueError):
        ledger.reserve(1, -1, DAY)
    with pytest.raises(ValueError):
        ledger.refund(1, -1, DAY)
    with pytest.raises(ValueError):
        ledger.grant(1, -1)
    assert ledger.remaining(1, DAY) == 100


def test_unknown_account_raises_key_error(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    calls: list[tuple[str, tuple[int, ...]]] = [
        ("reserve", (2, 1, DAY)),
        ("refund", (2, 1, DAY)),
        ("remaining", (2, DAY)),
        ("limit", (2,)),
        ("spent", (2,)),
        ("grant", (2, 1)),
        ("take_back", (2,)),
    ]
    for name, args in calls:
        with pytest.raises(KeyError):
            getattr(ledger, name)(*args)
    assert 2 not in ledger and 1 in ledger
    assert len(ledger) == 1


# --- days ---------------------------------------------------------------------------------------


def test_new_day_rolls_over(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    assert ledger.reserve(1, 10, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1
    assert ledger.reserve(1, 3, DAY + 1) == 7
    assert ledger.spent(1) == 3
    assert usage(ledger) == [(1, DAY, 10, 1), (1, DAY + 1, 3, 1)]


def test_remaining_for_a_newer_day_does_not_mutate(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    ledger.reserve(1, 8, DAY)
    assert ledger.remaining(1, DAY + 1) == 10
    assert ledger.remaining(1, DAY) == 2  # still on DAY
    assert ledger.spent(1) == 8
    lease_mode = ledger_with(limits, limit=10, auto_lease=False)
    lease_mode.grant(1, 5)
    assert lease_mode.remaining(1, DAY + 1) == 0
    assert lease_mode.remaining(1, DAY) == 5


def test_reserve_with_an_older_day_counts_on_the_current_day(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    ledger.reserve(1, 1, DAY + 1)
    assert ledger.reserve(1, 2, DAY) == 7
    assert ledger.remaining(1, DAY) == 7
    assert usage(ledger) == [(1, DAY + 1, 3, 2)]


def test_refund_after_rollover_corrects_the_old_day_only(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    ledger.reserve(1, 4, DAY)
    assert usage(ledger) == [(1, DAY, 4, 1)]
    ledger.reserve(1, 1, DAY + 1)
    ledger.refund(1, 4, DAY)
    assert (ledger.remaining(1, DAY + 1), ledger.spent(1)) == (9, 1)
    assert usage(ledger) == [(1, DAY, -4, -1), (1, DAY + 1, 1, 1)]


def test_undrained_usage_stays_on_its_day_across_rollover(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=10)
    ledger.reserve(1, 4, DAY)
    ledger.reserve(1, 2, DAY + 1)
    ledger.refund(1, 4, DAY)
    ledger.reserve(1, 1, DAY + 1)
    assert usage(ledger) == [(1, DAY + 1, 3, 2)]  # DAY: +4 -4 and +1 -1 cancel out
    assert ledger.drain_usage() == []


def test_refund_for_a_day_not_reached_is_an_error(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    with pytest.raises(ValueError):
        ledger.refund(1, 1, DAY + 1)
    assert ledger.drain_usage() == []


# --- set_account ----------------------------------------------------------------------------------


def test_startup_with_stored_spend(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, spent=40)
    assert (ledger.limit(1), ledger.spent(1), ledger.remaining(1, DAY)) == (100, 40, 60)
    assert ledger.drain_usage() == []  # stored spend is not new usage
    assert ledger.reserve(1, 60, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1


def test_startup_already_over_limit(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, spent=130)
    assert ledger.remaining(1, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1
    assert ledger.reserve(1, 1, DAY + 1) == 99


def test_plan_change_same_day_uses_the_ledgers_own_spend(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, spent=10)
    ledger.reserve(1, 30, DAY)
    ledger.set_account(1, 200, DAY, 0)  # `spent` ignored for a known same-day account
    assert (ledger.limit(1), ledger.spent(1), ledger.remaining(1, DAY)) == (200, 40, 160)
    ledger.set_account(1, 25, DAY, 0)
    assert ledger.remaining(1, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1
    assert ledger.reserve(1, 1, DAY + 1) == 24
    assert usage(ledger) == [(1, DAY, 30, 1), (1, DAY + 1, 1, 1)]


def test_set_account_for_a_newer_day_starts_that_day(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100)
    ledger.reserve(1, 30, DAY)
    ledger.set_account(1, 100, DAY + 1, 5)
    assert (ledger.spent(1), ledger.remaining(1, DAY + 1)) == (5, 95)
    assert usage(ledger) == [(1, DAY, 30, 1)]


def test_set_account_with_an_older_day_only_changes_the_limit(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100)
    ledger.reserve(1, 30, DAY + 1)
    ledger.set_account(1, 50, DAY, 99)
    assert (ledger.limit(1), ledger.spent(1), ledger.remaining(1, DAY + 1)) == (50, 30, 20)


def test_many_accounts(limits: ModuleType) -> None:
    ledger = limits.CreditLedger()
    for account in range(1, 51):
        ledger.set_account(account, account, DAY, 0)
    for account in range(1, 51):
        assert ledger.reserve(account, account, DAY) == 0
        assert ledger.reserve(account, 1, DAY) == -1
    assert len(ledger) == 50
    assert usage(ledger) == [(a, DAY, a, 1) for a in range(1, 51)]


# --- lease mode -----------------------------------------------------------------------------------


def test_lease_mode_spends_only_granted_credits(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, auto_lease=False)
    assert ledger.remaining(1, DAY) == 0
    assert ledger.reserve(1, 1, DAY) == -1
    ledger.grant(1, 30)
    assert ledger.reserve(1, 20, DAY) == 10
    assert ledger.reserve(1, 11, DAY) == -1
    assert ledger.take_back(1) == 10
    assert ledger.remaining(1, DAY) == 0
    assert ledger.take_back(1) == 0
    assert ledger.spent(1) == 20
    assert usage(ledger) == [(1, DAY, 20, 1)]


def test_lease_mode_plan_change_keeps_the_lease(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, auto_lease=False)
    ledger.grant(1, 30)
    ledger.set_account(1, 10, DAY, 0)
    assert (ledger.limit(1), ledger.remaining(1, DAY)) == (10, 30)


def test_lease_mode_new_day_drops_the_lease(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, auto_lease=False)
    ledger.grant(1, 30)
    assert ledger.reserve(1, 1, DAY + 1) == -1
    assert ledger.remaining(1, DAY + 1) == 0
    ledger.set_account(1, 100, DAY + 2, 0)
    assert ledger.remaining(1, DAY + 2) == 0


def test_grant_for_a_day_rolls_over_first_and_stale_grants_are_dropped(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100, auto_lease=False)
    ledger.grant(1, 30, DAY)
    ledger.reserve(1, 5, DAY)
    # A grant for tomorrow, arriving before tomorrow's first call, survives that call's rollover.
    ledger.grant(1, 40, DAY + 1)
    assert ledger.spent(1) == 0
    assert ledger.reserve(1, 40, DAY + 1) == 0
    ledger.grant(1, 50, DAY)  # yesterday's grant: worthless now
    assert ledger.remaining(1, DAY + 1) == 0


def test_take_back_in_auto_mode(limits: ModuleType) -> None:
    ledger = ledger_with(limits, limit=100)
    ledger.reserve(1, 10, DAY)
    assert ledger.take_back(1) == 90
    assert ledger.reserve(1, 1, DAY) == -1
    ledger.grant(1, 5)
    assert ledger.reserve(1, 1, DAY) == 4


# --- model check: real admission flow -----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    daily_limits=st.lists(st.integers(0, 60), min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "reserve", "refund", "next_day", "drain"]),
            st.integers(0, 2),
            st.integers(0, 25),
        ),
        max_size=80,
    ),
)
def test_usage_matches_a_simple_model(
    limits: ModuleType, daily_limits: list[int], steps: list[tuple[str, int, int]]
) -> None:
    """Admit, refund (possibly after midnight), drain: the ledger agrees with plain bookkeeping."""
    ledger = limits.CreditLedger()
    day = DAY
    for account, limit in enumerate(daily_limits):
        ledger.set_account(account, limit, day, 0)
    spent: Counter[tuple[int, int]] = Counter()  # credits net of refunds, per (account, day)
    calls: Counter[tuple[int, int]] = Counter()
    outstanding: list[tuple[int, int, int]] = []
    drained_credits: Counter[tuple[int, int]] = Counter()
    drained_calls: Counter[tuple[int, int]] = Counter()

    def drain() -> None:
        for account, d, credit_delta, call_delta, prompt_tokens, completion_tokens in ledger.drain_usage():
            assert (credit_delta, call_delta) != (0, 0) and (prompt_tokens, completion_tokens) == (0, 0)
            drained_credits[(account, d)] += credit_delta
            drained_calls[(account, d)] += call_delta

    for op, index, cost in steps:
        account = index % len(daily_limits)
        if op == "reserve":
            left = daily_limits[account] - spent[(account, day)]
            result = ledger.reserve(account, cost, day)
            if cost <= left:
                assert result == left - cost
                spent[(account, day)] += cost
                calls[(account, day)] += 1
                outstanding.append((account, cost, day))
            else:
                assert result == -1
        elif op == "refund" and outstanding:
            account, cost, made_on = outstanding.pop(index % len(outstanding))
            ledger.refund(account, cost, made_on)
            spent[(account, made_on)] -= cost
            calls[(account, made_on)] -= 1
        elif op == "next_day":
            day += 1
        elif op == "drain":
            drain()
        for a, limit in enumerate(daily_limits):
            assert ledger.remaining(a, day) == limit - spent[(a, day)]
    drain()
    assert {k: v for k, v in drained_credits.items() if v} == {k: v for k, v in spent.items() if v}
    assert {k: v for k, v in drained_calls.items() if v} == {k: v for k, v in calls.items() if v}


# --- the two implementations must not diverge ---------------------------------------------------

LEDGER_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["set", "reserve", "reserve", "reserve", "refund", "remaining", "grant", "grant_day", "take_back", "tokens",
             "drain"]
        ),
        st.integers(0, 3),  # account (3 is never set up until a "set" draws it)
        st.integers(0, 120),  # amount
        st.integers(-1, 2),  # day offset from a clock that mostly moves forward
    ),
    max_size=80,
)


def run_ledger_ops(limits: ModuleType, auto_lease: bool, ops: list[tuple[str, int, int, int]]) -> list[Any]:
    ledger = limits.CreditLedger(auto_lease)
    base = DAY
    out: list[Any] = []
    for account in range(3):
        ledger.set_account(account, 50 * account, base, account)
    for op, account, amount, offset in ops:
        day = base + offset
        base = max(base, day)
        try:
            if op == "set":
                result: Any = ledger.set_account(account, amount, day, amount // 3)
            elif op == "reserve":
                result = ledger.reserve(account, amount // 4, day)
            elif op == "refund":
                result = ledger.refund(account, amount // 4, day)
            elif op == "remaining":
                result = ledger.remaining(account, day)
            elif op == "grant":
                result = ledger.grant(account, amount)
            elif op == "grant_day":
                result = ledger.grant(account, amount, day)
            elif op == "take_back":
                result = ledger.take_back(account)
            elif op == "tokens":
                result = ledger.record_tokens(account, amount, amount // 2, day)
            else:
                result = sorted(ledger.drain_usage())
        except (KeyError, ValueError) as exc:
            result = type(exc).__name__
        out.append((op, result))
        if account in ledger:
            out.append((ledger.limit(account), ledger.spent(account), ledger.remaining(account, base)))
    out.append(sorted(ledger.drain_usage()))
    out.append(len(ledger))
    return out


@settings(max_examples=200, deadline=None)
@given(auto_lease=st.booleans(), ops=LEDGER_OPS)
def test_implementations_agree_on_random_ledger_operations(
    limits: ModuleType, limits_other: ModuleType, auto_lease: bool, ops: list[tuple[str, int, int, int]]
) -> None:
    assert run_ledger_ops(limits, auto_lease, ops) == run_ledger_ops(limits_other, auto_lease, ops)


# --- tokens ------------------------------------------------------------------------------------


def test_tokens_share_the_row_of_their_calls(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    ledger.reserve(1, 5, DAY)
    ledger.record_tokens(1, 9, 7, DAY)
    ledger.record_tokens(1, 1, 0, DAY)
    assert ledger.drain_usage() == [(1, DAY, 5, 1, 10, 7)]
    ledger.record_tokens(1, 3, 2, DAY)  # a stream that ended after the last drain
    assert ledger.drain_usage() == [(1, DAY, 0, 0, 3, 2)]
    ledger.record_tokens(1, 0, 0, DAY)
    assert ledger.drain_usage() == []


def test_tokens_of_a_call_that_straddled_midnight_stay_on_its_day(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    ledger.reserve(1, 5, DAY)
    ledger.reserve(1, 2, DAY + 1)  # rolls the account over; DAY's undrained usage moves aside
    ledger.record_tokens(1, 4, 3, DAY)
    ledger.record_tokens(1, 1, 1, DAY + 1)
    assert sorted(ledger.drain_usage()) == [(1, DAY, 5, 1, 4, 3), (1, DAY + 1, 2, 1, 1, 1)]


def test_tokens_are_checked(limits: ModuleType) -> None:
    ledger = ledger_with(limits)
    with pytest.raises(ValueError):
        ledger.record_tokens(1, -1, 0, DAY)
    with pytest.raises(ValueError):
        ledger.record_tokens(1, 0, -1, DAY)
    with pytest.raises(ValueError):
        ledger.record_tokens(1, 1, 1, DAY + 1)  # a day the account has not reached
    with pytest.raises(KeyError):
        ledger.record_tokens(2, 1, 1, DAY)
    assert ledger.drain_usage() == []
