"""Message file names: the compact time form and the name pattern."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from hybridcomms._names import compact_time, compact_time_of, parse_compact, parse_name


def by_formatting(dt: datetime) -> str:
    s = dt.isoformat(timespec="microseconds")
    return f"{s[0:4]}{s[5:7]}{s[8:10]}T{s[11:13]}{s[14:16]}{s[17:19]}{s[20:26]}Z"


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "dt",
    [
        EPOCH,
        EPOCH + timedelta(microseconds=999_999),
        datetime(2026, 11, 26, 23, 59, 59, 999_999, tzinfo=timezone.utc),
        datetime(2096, 10, 2, 7, 6, 39, 999_999, tzinfo=timezone.utc),  # just below the fast range's end
        datetime(2200, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone.utc),  # beyond it: the exact path
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
    ],
)
def test_compact_time_of_is_exact_at_the_edges(dt: datetime) -> None:
    assert compact_time_of(dt) == by_formatting(dt)


def test_compact_time_of_is_exact_for_random_times_and_agrees_with_compact_time() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        us = rng.choice([0, 1, 999_998, 999_999, rng.randrange(1_000_000)])
        dt = EPOCH + timedelta(seconds=rng.randrange(0, 4_000_000_000), microseconds=us)
        text = compact_time_of(dt)
        assert text == by_formatting(dt)
        assert abs(parse_compact(text) - dt.timestamp()) < 2e-6
    now = datetime.now(timezone.utc)
    assert compact_time_of(now)[:15] == compact_time(now.timestamp())[:15]


def test_parse_name_reads_only_names_hybridcomms_writes() -> None:
    info = parse_name("1H.20261126T112403123456Z.abc.a3.json")
    assert info is not None and (info.rank, info.due, info.id, info.attempt) == (
        "1H",
        "20261126T112403123456Z",
        "abc",
        3,
    )
    assert parse_name("msg_20250501_120000_000001_ab.json") is None
