"""Per-account requests-per-minute buckets, on both implementations."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

RPM = 60.0
RATE = RPM / 60.0  # one token per second keeps the arithmetic readable
T0 = 1_000.0


def drain(buckets: Any, key: int, capacity: float, rate: float, now: float) -> None:
    while buckets.acquire(key, capacity, rate, now).allowed:
        pass


def test_new_key_starts_full(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    result = buckets.acquire(1, RPM, RATE, T0)
    assert result.allowed is True
    assert result.remaining == 59
    assert result.retry_after == 0.0
    assert result.reset_after == pytest.approx(1.0)
    assert len(buckets) == 1


def test_deducts_until_empty_then_refuses_with_retry_after(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    capacity, rate = 10.0, 10.0 / 60.0
    results = [buckets.acquire(7, capacity, rate, T0) for _ in range(11)]
    assert [r.allowed for r in results] == [True] * 10 + [False]
    assert [r.remaining for r in results] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    refused = results[-1]
    assert refused.retry_after == pytest.approx(6.0)
    assert refused.reset_after == pytest.approx(60.0)


def test_refusal_takes_nothing(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    drain(buckets, 1, 2.0, RATE, T0)
    for _ in range(5):
        assert not buckets.acquire(1, 2.0, RATE, T0 + 0.5).allowed
    # Half a token after 0.5 s, the other half after 1 s: refusals did not push it back.
    assert buckets.acquire(1, 2.0, RATE, T0 + 1.0).allowed


def test_waiting_exactly_retry_after_is_enough(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    capacity, rate = 7.0, 7.0 / 60.0  # a rate whose reciprocal is not exact in binary
    now = T0 + 0.123
    drain(buckets, 3, capacity, rate, now)
    for _ in range(20):
        refused = buckets.acquire(3, capacity, rate, now)
        assert not refused.allowed
        now += refused.retry_after
        assert buckets.acquire(3, capacity, rate, now).allowed


def test_refills_continuously(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    drain(buckets, 1, RPM, RATE, T0)
    assert buckets.peek(1, RPM, RATE, T0 + 2.5).remaining == 2
    result = buckets.acquire(1, RPM, RATE, T0 + 3.25)
    assert result.allowed
    assert result.remaining == 2  # 3.25 - 1 tokens
    assert result.reset_after == pytest.approx(RPM - 2.25)


def test_never_refills_above_capacity(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    buckets.acquire(1, RPM, RATE, T0)
    result = buckets.acquire(1, RPM, RATE, T0 + 10_000.0)
    assert result.remaining == 59
    assert result.reset_after == pytest.approx(1.0)


def test_clock_going_backwards_refills_nothing_and_keeps_state(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    drain(buckets, 1, RPM, RATE, T0)
    assert not buckets.acquire(1, RPM, RATE, T0 - 500.0).allowed
    assert buckets.peek(1, RPM, RATE, T0 - 500.0).remaining == 0
    # Back at T0 + 1 only one second has passed since the bucket was emptied, not 501.
    result = buckets.acquire(1, RPM, RATE, T0 + 1.0)
    assert result.allowed
    assert result.remaining == 0


def test_capacity_shrink_clamps_tokens(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    buckets.acquire(1, 600.0, 10.0, T0)
    result = buckets.acquire(1, 10.0, 10.0 / 60.0, T0)
    assert result.allowed
    assert result.remaining == 9
    assert buckets.peek(1, 10.0, 10.0 / 60.0, T0).remaining == 9


def test_capacity_growth_keeps_tokens_and_refills_to_new_capacity(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    buckets.acquire(1, 10.0, 10.0 / 60.0, T0)
    assert buckets.peek(1, 100.0, 100.0 / 60.0, T0).remaining == 9
    assert buckets.peek(1, 100.0, 100.0 / 60.0, T0 + 60.0).remaining == 100


def test_peek_does_not_deduct_or_create(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    fresh = buckets.peek(1, RPM, RATE, T0)
    assert (fresh.allowed, fresh.remaining, fresh.retry_after, fresh.reset_after) == (True, 60, 0.0, 0.0)
    assert len(buckets) == 0
    buckets.acquire(1, RPM, RATE, T0)
    for _ in range(3):
        assert buckets.peek(1, RPM, RATE, T0).remaining == 59
    drain(buckets, 1, RPM, RATE, T0)
    empty = buckets.peek(1, RPM, RATE, T0 + 0.25)
    assert not empty.allowed
    assert empty.retry_after == pytest.approx(0.75)
    assert empty.reset_after == pytest.approx(59.75)


def test_cost_above_one(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    assert buckets.acquire(1, 10.0, 1.0, T0, 4.0).remaining == 6
    assert buckets.acquire(1, 10.0, 1.0, T0, 4.0).remaining == 2
    refused = buckets.acquire(1, 10.0, 1.0, T0, 4.0)
    assert not refused.allowed
    assert refused.remaining == 2
    assert refused.retry_after == pytest.approx(2.0)


def test_cost_that_can_never_fit_waits_forever(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    result = buckets.acquire(1, 5.0, 1.0, T0, 6.0)
    assert not result.allowed
    assert result.retry_after == math.inf
    assert buckets.peek(1, 5.0, 1.0, T0).remaining == 5


def test_zero_capacity_and_zero_rate(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    none = buckets.acquire(1, 0.0, 0.0, T0)
    assert (none.allowed, none.remaining, none.retry_after, none.reset_after) == (False, 0, math.inf, 0.0)
    stuck = limits.TokenBuckets()
    stuck.acquire(2, 1.0, 0.0, T0)
    refused = stuck.acquire(2, 1.0, 0.0, T0 + 1e6)
    assert (refused.allowed, refused.retry_after, refused.reset_after) == (False, math.inf, math.inf)


def test_zero_cost_is_always_allowed(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    drain(buckets, 1, 3.0, RATE, T0)
    assert buckets.acquire(1, 3.0, RATE, T0, 0.0).allowed


def test_negative_cost_is_rejected(limits: ModuleType) -> None:
    with pytest.raises(ValueError):
        limits.TokenBuckets().acquire(1, RPM, RATE, T0, -1.0)


def test_integer_arguments_behave_like_floats(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    result = buckets.acquire(1, 60, 1, 1000)
    assert (result.allowed, result.remaining) == (True, 59)
    assert isinstance(result.retry_after, float) and isinstance(result.reset_after, float)


def test_keys_are_independent_and_forget(limits: ModuleType) -> None:
    buckets = limits.TokenBuckets()
    drain(buckets, 1, 3.0, RATE, T0)
    assert buckets.acquire(2, 3.0, RATE, T0).allowed
    assert len(buckets) == 2
    buckets.forget(1)
    buckets.forget(12345)  # unknown keys are fine
    assert len(buckets) == 1
    assert buckets.acquire(1, 3.0, RATE, T0).remaining == 2  # starts full again


def test_result_is_read_only(limits: ModuleType) -> None:
    result = limits.TokenBuckets().acquire(1, RPM, RATE, T0)
    for name in ("allowed", "remaining", "retry_after", "reset_after"):
        with pytest.raises(AttributeError):
            setattr(result, name, 0)
    assert "allowed=True" in repr(result)


# --- the two implementations must not diverge ---------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "acquire", "acquire", "peek", "forget"]),
        st.integers(1, 3),  # key
        st.sampled_from([0.0, 1.0, 3.0, 10.0, 60.0, 600.0]),  # capacity (plan changes included)
        st.floats(0.0, 20.0),  # refill per second
        st.floats(-5.0, 30.0),  # clock step, sometimes backwards
        st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 7.0]),  # cost
    ),
    max_size=60,
)


def run_bucket_ops(limits: ModuleType, ops: list[tuple[str, int, float, float, float, float]]) -> list[Any]:
    buckets = limits.TokenBuckets()
    now = 5_000.0
    out: list[Any] = []
    for op, key, capacity, rate, step, cost in ops:
        now += step
        if op == "acquire":
            r = buckets.acquire(key, capacity, rate, now, cost)
        elif op == "peek":
            r = buckets.peek(key, capacity, rate, now)
        else:
            buckets.forget(key)
            out.append(("forget", len(buckets)))
            continue
        out.append((op, r.allowed, r.remaining, r.retry_after, r.reset_after))
    return out


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_implementations_agree_on_random_bucket_operations(
    limits: ModuleType, limits_other: ModuleType, ops: list[tuple[str, int, float, float, float, float]]
) -> None:
    assert run_bucket_ops(limits, ops) == run_bucket_ops(limits_other, ops)


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_bucket_invariants_on_random_operations(
    limits: ModuleType, ops: list[tuple[str, int, float, float, float, float]]
) -> None:
    for entry in run_bucket_ops(limits, ops):
        if entry[0] == "forget":
            continue
        _, allowed, remaining, retry_after, reset_after = entry
        assert remaining >= 0
        assert reset_after >= 0.0
        assert (retry_after == 0.0) if allowed else (retry_after > 0.0)
