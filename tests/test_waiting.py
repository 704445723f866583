"""The tests' one wait on a condition (tests/waiting.py) says what it waited for and what it saw."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest
from waiting import eventually, while_running


def test_it_returns_the_value_that_satisfied_the_condition_as_soon_as_it_holds() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter), "the third poll", until=lambda n: n >= 3) == 3
    assert eventually(lambda: ["x"], "a non-empty list") == ["x"]  # the first poll is at once


def test_a_timeout_names_what_was_awaited_and_the_last_value_seen() -> None:
    counter = itertools.count()
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for the count to reach 10\*\*9; last seen: \d+$"):
        eventually(lambda: next(counter), "the count to reach 10**9", timeout=0.1, until=lambda n: n >= 10**9)
    assert 0.1 <= time.monotonic() - t0 < 5
    polls = next(counter)
    assert 3 <= polls < 100  # polled again and again, at an interval that grows (not a busy loop)


def test_exceptions_named_as_not_yet_are_retried_and_the_last_one_is_reported() -> None:
    tries = itertools.count()

    def flaky() -> str:
        if next(tries) < 3:
            raise FileNotFoundError("not there yet")
        return "there"

    assert eventually(flaky, "the file", ignoring=(OSError,)) == "there"

    def missing() -> str:
        raise FileNotFoundError("still not there")

    with pytest.raises(AssertionError, match="FileNotFoundError: still not there") as caught:
        eventually(missing, "the file", timeout=0.05, ignoring=(OSError,))
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_any_other_exception_fails_at_once() -> None:
    def dead() -> bool:
        raise AssertionError("the process exited")

    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="the process exited"):
        eventually(dead, "the process to be ready", timeout=30)
    assert time.monotonic() - t0 < 5


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(AssertionError, match=r"\.\.\. \(100002 characters\)$"):
        eventually(lambda: "x" * 100_000, "a short text", timeout=0.01, until=lambda t: len(t) < 10)


def test_a_wait_on_what_a_process_does_ends_at_once_when_it_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(30)
    with pytest.raises(AssertionError, match="the process exited with 3 first"):
        eventually(while_running(proc, lambda: False), "a ready file", timeout=30)
