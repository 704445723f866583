"""Progress of a long operation on stderr, only when stderr is a terminal (quiet when piped)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """``done/total`` on stderr, rewritten in place, only when stderr is a terminal."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.on = sys.stderr.isatty() and total > 0
        self.last = 0.0

    def step(self, done: int) -> None:
        now = time.monotonic()
        if self.on and (now - self.last >= 0.1 or done == self.total):
            self.last = now
            sys.stderr.write(f"\r{self.what}: {done}/{self.total}")
            sys.stderr.flush()

    def end(self) -> None:
        if self.on:
            sys.stderr.write("\n")
            sys.stderr.flush()
