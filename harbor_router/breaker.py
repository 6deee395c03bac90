"""Circuit breakers, one per project (DESIGN §3.3).

Theory of operation: a project that keeps failing (connection errors, timeouts, 5xx) is taken
out of fan-outs and mapped requests fail fast, instead of every request waiting out
``RESOLVER_TIMEOUT``. After ``CIRCUIT_BREAKER_TIMEOUT`` exactly one request is let through as a
probe (half-open); its outcome closes or re-opens the breaker. A probe that ends without an
outcome (cancelled as a fan-out loser) hands the probe to the next request. 2xx, 3xx, 404, 401
and 429 are answers, not failures: a project that says "not here" or "slow down" is healthy.

The transitions are a table, ``_TRANSITIONS[(state, event)]``. Every change of state is
reported to ``on_transition(project, old, new)`` (metrics and the log, wired in server.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .responses import Status

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# State values as a gauge: 0 closed, 1 open, 2 half-open (the convention of the metrics).
STATE_VALUES: Final = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}

SUCCESS, FAILURE, TRIP, EXPIRE, ABANDON = "success", "failure", "trip", "expire", "abandon"

_TRANSITIONS: Final = {
    (CLOSED, SUCCESS): CLOSED,
    (CLOSED, FAILURE): CLOSED,  # counted; TRIP when the count reaches the threshold
    (CLOSED, TRIP): OPEN,
    (OPEN, EXPIRE): HALF_OPEN,  # the caller that saw the expiry is the probe
    (OPEN, SUCCESS): CLOSED,  # a late answer from before the trip
    (OPEN, FAILURE): OPEN,
    (HALF_OPEN, SUCCESS): CLOSED,
    (HALF_OPEN, FAILURE): OPEN,
    (HALF_OPEN, ABANDON): OPEN,  # probe ended without an outcome: the next caller probes
}


def is_failure(status: Status) -> bool:
    """Statuses that count against a project's breaker."""
    return status >= 500


Transition = Callable[[str, str, str], None]


class Breaker:
    __slots__ = (
        "_clock",
        "_on_transition",
        "_steady",
        "_threshold",
        "_timeout",
        "failures",
        "name",
        "opened_at",
        "state",
    )

    def __init__(
        self,
        threshold: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str = "",
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self._on_transition = on_transition
        self._threshold = threshold
        self._timeout = timeout
        self._clock = clock
        self.state: str = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        # closed with no failure counted, so that a success changes nothing: the answered hit
        # path tests one C value (compiled) instead of calling success()
        self._steady = True

    def allow(self) -> bool:
        """May a request go to this project now? In half-open, only the one probe may."""
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN and self._clock() - self.opened_at >= self._timeout:
            self._move(EXPIRE)
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        if self.state is CLOSED:
            return 0.0
        return max(0.0, self.opened_at + self._timeout - self._clock())

    def answered(self, status: Status) -> None:
        """The project answered with ``status``: a failure (:func:`is_failure`) or a success."""
        if is_failure(status):  # compiled: a C call (dataplane FUNCTIONS)
            self.failure()
        elif not self._steady:
            self.success()

    def success(self) -> None:
        if self.state is not CLOSED or self.failures:
            self.failures = 0
            self._move(SUCCESS)

    def failure(self) -> None:
        if self.state is CLOSED:
            self.failures += 1
            self._steady = False
            if self.failures >= self._threshold:
                self._move(TRIP)
        else:
            self._move(FAILURE)

    def abandon(self) -> None:
        """A request let through ended without an outcome (cancelled)."""
        if self.state is HALF_OPEN:
            self._move(ABANDON)
            self.opened_at -= self._timeout  # expired already: the next caller probes

    def _move(self, event: str) -> None:
        old = self.state
        new = _TRANSITIONS[(old, event)]
        if new is OPEN and old is not OPEN:
            self.opened_at = self._clock()
        self.state = new
        self._steady = new is CLOSED and not self.failures
        if new is not old and self._on_transition is not None:
            self._on_transition(self.name, old, new)


class Breakers:
    """The breakers of all projects, created on first use."""

    def __init__(
        self,
        threshold: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_transition: Transition | None = None,
    ) -> None:
        self._threshold = threshold
        self._timeout = timeout
        self._clock = clock
        self._on_transition = on_transition
        self._by_project: dict[str, Breaker] = {}

    def get(self, project: str) -> Breaker:
        breaker = self._by_project.get(project)
        if breaker is None:
            breaker = self._by_project[project] = Breaker(
                self._threshold,
                self._timeout,
                self._clock,
                name=project,
                on_transition=self._on_transition,
            )
        return breaker

    def names(self) -> list[str]:
        """Projects that have a breaker."""
        return list(self._by_project)

    def states(self, projects: Iterable[str] | None = None) -> dict[str, str]:
        names = self._by_project if projects is None else projects
        return {name: self.get(name).state for name in names}
