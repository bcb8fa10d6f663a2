"""RetryBudget: retries may add about a fifth to upstream traffic, never multiply it (SPEC §8).

Envoy's retry budget, per process: a retry (any upstream try of a call after
its first) may start while the retries in flight are fewer than
`ratio` times the calls in flight, or fewer than `min_concurrent`, so a quiet
gateway can still retry. In an outage every call fails fast, retries pile up
in flight and the budget refuses the excess; the circuits (see `TargetHealth`)
then stop the first tries too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class RetryBudget:
    """Counts calls and retries in flight; `retry()` says whether one more retry may start."""

    def __init__(self, ratio: float = 0.2, min_concurrent: int = 3) -> None:
        self.ratio = ratio
        self.min_concurrent = min_concurrent
        self.calls = 0
        self.retries = 0
        self.refused = 0  # retries the budget did not allow (a metric)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count one call in flight for as long as the block runs."""
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    def acquire(self) -> bool:
        """Start one retry if the budget allows; pair every True with `release()`."""
        if self.retries >= max(self.min_concurrent, self.ratio * self.calls):
            self.refused += 1
            return False
        self.retries += 1
        return True

    def release(self) -> None:
        """The retry started by `acquire()` is over."""
        self.retries -= 1

    @contextlib.contextmanager
    def retry(self) -> Iterator[bool]:
        """`with budget.retry() as allowed:` — one retry held for the block when `allowed`."""
        allowed = self.acquire()
        try:
            yield allowed
        finally:
            if allowed:
                self.release()
