"""Progress of a long operation on stderr, only when stderr is a terminal (quiet when piped).

One line per operation, redrawn in place (``\\r``) at most ten times a second and once more at the end:
``migrate: 120/1000 messages``, ``backup: 3.1 MiB / 12.0 MiB``. Nothing is written when stderr is not a
terminal, so a cron job or a pipe gets only the command's own output."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Phases", "Progress", "human_size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    """``512 B``, ``3.1 MiB``: bytes for people (powers of 1024)."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """``what: done/total [unit]`` (or sizes, with ``sizes=True``) on ``stream`` (stderr), rewritten in
    place, only when the stream is a terminal. The total may be given late or change (`step`)."""

    def __init__(
        self,
        what: str,
        total: int = 0,
        *,
        unit: str = "",
        sizes: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.sizes = what, total, unit, sizes
        self.stream = sys.stderr if stream is None else stream
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError):  # a closed or replaced stream
            self.on = False
        self.last = 0.0
        self.shown = ""  # the line drawn last (a shorter one is padded to cover it)
        self.drawn = False

    def step(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not self._due(done, now):
            return
        self.last = now
        text = f"{self.what}: {self._amount(done)}"
        if text == self.shown:
            return
        self._write("\r" + text.ljust(len(self.shown)))
        self.shown, self.drawn = text, True

    def _due(self, done: int, now: float) -> bool:
        """Whether the line is drawn now: on a terminal, with a total, at most every 0.1 s (and always
        once all is done)."""
        return self.on and self.total > 0 and (now - self.last >= 0.1 or done >= self.total)

    def _amount(self, done: int) -> str:
        if self.sizes:
            return f"{human_size(done)} / {human_size(self.total)}"
        return f"{done}/{self.total}" + (f" {self.unit}" if self.unit else "")

    def end(self) -> None:
        """Close the line (if one was drawn): what comes next starts on a line of its own."""
        if self.drawn:
            self._write("\n")
            self.drawn, self.shown = False, ""

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: progress is not worth failing for
            self.on = False


class Phases:
    """Progress lines one after the other (``backup``, then ``messages``): ``phases(name, done, total)``
    draws the line of ``name``; the first step of a new phase ends the line of the one before."""

    def __init__(self, **lines: Progress) -> None:
        self.lines = lines
        self.current: str | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.current and self.current is not None:
            self.lines[self.current].end()
        self.current = phase
        self.lines[phase].step(done, total)

    def end(self) -> None:
        for line in self.lines.values():
            line.end()
