"""A consecutive-failure circuit breaker for one backend (RELIABILITY scenarios 8 and 9).

Pure and clock-injected: it never does I/O and never sleeps. The store asks
`allow()` before each call and reports `success()` or `failure()` after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    """Opens after `failures` consecutive failures; after `open_s` lets one trial call through.

    - closed: every call is allowed; a success resets the failure count.
    - open: calls are refused for `open_s` seconds.
    - half-open: one trial is allowed at a time. Its success closes the
      breaker; its failure opens it for another `open_s`.

    `opened` counts how many times the breaker has opened (a metric).
    """

    def __init__(self, failures: int = 5, open_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.open_s = open_s
        self.clock = clock
        self.opened = 0
        self._consecutive = 0
        self._opened_at: float | None = None  # None while closed
        self._trial_at: float | None = None  # when the half-open trial was let through

    @property
    def state(self) -> BreakerState:
        """ "closed", "open" (calls are refused right now) or "half_open" (a trial may go through)."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._trial_due(self.clock()) else "open"

    def allow(self) -> bool:
        """Whether a call may go to the backend now; in half-open, True once per trial."""
        if self._opened_at is None:
            return True
        now = self.clock()
        if not self._trial_due(now):
            return False
        self._trial_at = now
        return True

    def success(self) -> None:
        """A call succeeded: the backend answers, so close."""
        self._consecutive = 0
        self._opened_at = None
        self._trial_at = None

    def failure(self) -> None:
        """A call failed: count it, and open after `failures` in a row or when the trial failed."""
        self._consecutive += 1
        if self._opened_at is None:
            if self._consecutive >= self.failures:
                self._open()
        elif self._trial_at is not None:
            self._open()
        # Otherwise a call that started before the breaker opened has failed
        # late: it says nothing new, and must not extend the cool-down.

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._trial_at = None
        self.opened += 1

    def _trial_due(self, now: float) -> bool:
        assert self._opened_at is not None
        if now - self._opened_at < self.open_s:
            return False
        # A trial whose caller was cancelled never reports back; its slot is
        # freed after another `open_s`, so the breaker cannot stay open for ever.
        return self._trial_at is None or now - self._trial_at >= self.open_s
