"""The per-project circuit breaker as a state machine (DESIGN §3.3), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harbor_router.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, Breakers, is_failure


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    breaker = Breaker(3, 30, clock)
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(30)


def test_a_success_resets_the_count(clock: Clock) -> None:
    breaker = Breaker(2, 30, clock)
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == CLOSED


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    breaker = Breaker(1, 30, clock)
    breaker.failure()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert [breaker.allow() for _ in range(10)] == [False] * 10


def test_probe_success_closes(clock: Clock) -> None:
    breaker = Breaker(1, 30, clock)
    breaker.failure()
    clock.now += 31
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(5))


def test_probe_failure_reopens_for_a_full_timeout(clock: Clock) -> None:
    breaker = Breaker(1, 30, clock)
    breaker.failure()
    clock.now += 31
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    clock.now += 29
    assert not breaker.allow()
    clock.now += 2
    assert breaker.allow()


def test_abandoned_probe_hands_over_to_the_next_request(clock: Clock) -> None:
    breaker = Breaker(1, 30, clock)
    breaker.failure()
    clock.now += 31
    assert breaker.allow()
    breaker.abandon()
    assert breaker.state == OPEN
    assert breaker.allow()  # no new wait: the probe slot is free again
    assert not breaker.allow()


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (200, False),
        (206, False),
        (304, False),
        (401, False),
        (404, False),
        (429, False),
        (500, True),
        (502, True),
        (503, True),
    ],
)
def test_which_statuses_are_failures(status: int, failure: bool) -> None:
    assert is_failure(status) is failure


def test_breakers_are_per_project(clock: Clock) -> None:
    breakers = Breakers(1, 30, clock)
    breakers.get("quay").failure()
    assert breakers.states(["dockerhub", "quay"]) == {"dockerhub": CLOSED, "quay": OPEN}
    assert breakers.get("quay") is breakers.get("quay")


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.sampled_from([200, 304, 404, 429, 499, 500, 503])),
        st.tuples(st.just("allow"), st.just(0)),
        st.tuples(st.just("abandon"), st.just(0)),
        st.tuples(st.just("tick"), st.sampled_from([1, 10, 31])),
    ),
    max_size=40,
)


@given(ops=_OPS)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_answered_is_success_or_failure_by_status(ops: list[tuple[str, int]]) -> None:
    """``answered`` skips a success that changes nothing (closed, no failure counted): it
    moves exactly as ``success()``/``failure()`` by :func:`is_failure` do."""
    clock = Clock()
    moves: dict[str, list[tuple[str, str, str]]] = {"a": [], "b": []}

    def record(name: str, old: str, new: str) -> None:
        moves[name].append((name, old, new))

    answered = Breaker(3, 30, clock, name="a", on_transition=record)
    reference = Breaker(3, 30, clock, name="b", on_transition=record)
    for op, arg in ops:
        if op == "answer":
            answered.answered(arg)
            reference.failure() if is_failure(arg) else reference.success()
        elif op == "allow":
            assert answered.allow() == reference.allow()
        elif op == "abandon":
            answered.abandon()
            reference.abandon()
        else:
            clock.now += arg
        assert (answered.state, answered.failures, answered.opened_at) == (
            reference.state,
            reference.failures,
            reference.opened_at,
        )
        assert [m[1:] for m in moves["a"]] == [m[1:] for m in moves["b"]]
