"""Retry timing for messages whose handler failed."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "attempts_used_up"]


def attempts_used_up(attempt: int, max_attempts: int) -> bool:
    """The one rule for "attempts used up", for every backend and every caller: delivery number
    ``attempt`` (1 for the first) was the last one allowed. A failure then dead-letters the message
    instead of retrying it, and recovery buries a message whose last attempt was taken back."""
    return attempt >= max_attempts


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: how long a nacked message waits before it is due again.

    ``Backoff(initial=1.0, factor=2.0, maximum=300.0, jitter=0.1)``
        initial   delay after the first failed attempt, in seconds
        factor    each further attempt multiplies the delay by this
        maximum   the delay never exceeds this
        jitter    the delay is spread by ±this fraction so retries of a burst don't all land at once
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def delay(self, attempt: int) -> float:
        """Delay after failed attempt number ``attempt`` (1 for the first delivery)."""
        exponent = max(attempt - 1, 0)
        try:
            base = min(self.maximum, self.initial * self.factor**exponent)
        except OverflowError:
            base = self.maximum
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.maximum))
