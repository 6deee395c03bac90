"""The per-project circuit breaker as a state machine (DESIGN §3.3), on a fake clock."""

from __future__ import annotations

import pytest

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
