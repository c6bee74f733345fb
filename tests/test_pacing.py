"""sender/pacing.py: sending windows and the local day, in the campaign's own time zone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models import Campaign
from sender.pacing import local_day_start, next_window_open, window_open

WARSAW = ZoneInfo("Europe/Warsaw")
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def campaign(
    timezone: str = "Europe/Warsaw",
    days: str | None = "0,1,2,3,4",
    start: str | None = "09:00",
    end: str | None = "17:00",
) -> Campaign:
    return Campaign(
        name="c",
        from_addr="ana@example.com",
        timezone=timezone,
        window_days=days,
        window_start=start,
        window_end=end,
        created_at=NOW,
        updated_at=NOW,
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def warsaw(*args: int) -> datetime:
    return datetime(*args, tzinfo=WARSAW)  # type: ignore[misc]


# --- window_open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (warsaw(2025, 3, 3, 8, 59, 59), False),  # Monday, a second before the window
        (warsaw(2025, 3, 3, 9, 0), True),  # the start is inclusive
        (warsaw(2025, 3, 3, 16, 59, 59), True),
        (warsaw(2025, 3, 3, 17, 0), False),  # the end is exclusive
        (warsaw(2025, 3, 7, 12, 0), True),  # Friday
        (warsaw(2025, 3, 8, 12, 0), False),  # Saturday
        (warsaw(2025, 3, 9, 12, 0), False),  # Sunday
    ],
)
def test_window_edges_and_days(at: datetime, expected: bool) -> None:
    assert window_open(campaign(), at) is expected


def test_window_is_judged_in_the_campaigns_zone_whatever_zone_the_clock_reads() -> None:
    c = campaign()
    # 07:30 UTC is 08:30 in Warsaw in winter (CET, +1): closed; 09:30 in summer (CEST, +2): open.
    assert window_open(c, utc(2025, 1, 13, 7, 30)) is False
    assert window_open(c, utc(2025, 7, 14, 7, 30)) is True
    # Friday 23:30 UTC is already Saturday in Warsaw; Sunday 23:30 UTC is Monday 00:30 (still closed).
    assert window_open(campaign(start=None, end=None), utc(2025, 1, 17, 23, 30)) is False
    assert window_open(campaign(start=None, end=None), utc(2025, 1, 19, 23, 30)) is True
    # The same instant in another zone gives the same answer.
    instant = utc(2025, 1, 13, 8, 30)
    assert window_open(c, instant) is window_open(c, instant.astimezone(ZoneInfo("Asia/Tokyo"))) is True


def test_window_across_the_spring_dst_change() -> None:
    # Warsaw, Sunday 30 March 2025: 02:00 CET became 03:00 CEST. Monday 31 March is the first weekday.
    c = campaign()
    assert window_open(c, utc(2025, 3, 28, 7, 59)) is False  # Friday 08:59 CET
    assert window_open(c, utc(2025, 3, 28, 8, 0)) is True  # Friday 09:00 CET
    assert window_open(c, utc(2025, 3, 31, 6, 59)) is False  # Monday 08:59 CEST
    assert window_open(c, utc(2025, 3, 31, 7, 0)) is True  # Monday 09:00 CEST: an hour earlier in UTC
    assert window_open(c, utc(2025, 3, 31, 14, 59)) is True  # 16:59 CEST
    assert window_open(c, utc(2025, 3, 31, 15, 0)) is False  # 17:00 CEST


def test_a_window_around_the_skipped_hour() -> None:
    # 02:00-04:00 every day: on the spring-forward day only 03:00-04:00 exists, and it is open.
    c = campaign(days=None, start="02:00", end="04:00")
    assert window_open(c, utc(2025, 3, 30, 0, 59)) is False  # 01:59 CET
    assert window_open(c, utc(2025, 3, 30, 1, 0)) is True  # 03:00 CEST, the instant after 01:59:59 CET
    assert window_open(c, utc(2025, 3, 30, 1, 59)) is True  # 03:59 CEST
    assert window_open(c, utc(2025, 3, 30, 2, 0)) is False  # 04:00 CEST
    # On the fall-back day 02:00-03:00 happens twice; both are inside the window.
    assert window_open(c, utc(2025, 10, 26, 0, 30)) is True  # 02:30 CEST
    assert window_open(c, utc(2025, 10, 26, 1, 30)) is True  # 02:30 CET
    assert window_open(c, utc(2025, 10, 26, 2, 30)) is True  # 03:30 CET
    assert window_open(c, utc(2025, 10, 26, 3, 0)) is False  # 04:00 CET


def test_no_window_means_always_open() -> None:
    c = campaign(timezone="UTC", days=None, start=None, end=None)
    for hour in range(0, 24, 5):
        for day in range(7):
            assert window_open(c, utc(2025, 3, 3 + day, hour, 0)) is True
    # Days alone restrict the days; hours alone restrict the hours.
    assert window_open(campaign(days="5,6", start=None, end=None), warsaw(2025, 3, 3, 3, 0)) is False
    assert window_open(campaign(days=None), warsaw(2025, 3, 8, 9, 30)) is True


# --- local_day_start -----------------------------------------------------------------------------


def day_start(c: Campaign, now: datetime) -> datetime:
    """local_day_start as the instant the database compares with: the sender binds it converted to UTC.

    (Compare instants in UTC: Python's arithmetic and `==` on two datetimes of one ZoneInfo use wall
    time, and `==` across zones is False for a wall time that falls in a DST gap, by PEP 495.)
    """
    start = local_day_start(c, now)
    assert start.utcoffset() is not None
    return start.astimezone(UTC)


def test_local_day_start_is_local_midnight() -> None:
    c = campaign()
    # Winter: midnight CET is 23:00 UTC the evening before.
    assert day_start(c, utc(2025, 1, 15, 12, 0)) == utc(2025, 1, 14, 23, 0)
    # 23:30 UTC on the 14th is already the 15th in Warsaw.
    assert day_start(c, utc(2025, 1, 14, 23, 30)) == utc(2025, 1, 14, 23, 0)
    assert day_start(c, utc(2025, 1, 14, 22, 59, 59)) == utc(2025, 1, 13, 23, 0)
    # Summer: midnight CEST is 22:00 UTC.
    assert day_start(c, utc(2025, 7, 15, 12, 0)) == utc(2025, 7, 14, 22, 0)
    assert day_start(campaign(timezone="UTC"), utc(2025, 7, 15, 12, 0)) == utc(2025, 7, 15)
    # Whatever zone the clock reading is in.
    assert day_start(c, utc(2025, 1, 15, 12, 0).astimezone(ZoneInfo("America/New_York"))) == utc(
        2025, 1, 14, 23
    )


@pytest.mark.parametrize(
    ("day", "start_utc", "hours"),
    [
        ((2025, 3, 30), utc(2025, 3, 29, 23, 0), 23),  # spring forward: a 23-hour local day
        ((2025, 10, 26), utc(2025, 10, 25, 22, 0), 25),  # fall back: a 25-hour local day
        ((2025, 6, 15), utc(2025, 6, 14, 22, 0), 24),
    ],
)
def test_local_day_across_dst_changes(day: tuple[int, int, int], start_utc: datetime, hours: int) -> None:
    c = campaign()
    end_utc = start_utc + timedelta(hours=hours)
    # Every instant of that local day maps to the same start, in both offsets of the day.
    t = start_utc
    while t < end_utc:
        assert day_start(c, t) == start_utc, t
        t += timedelta(minutes=13)
    assert day_start(c, start_utc - timedelta(microseconds=1)) == start_utc - timedelta(hours=24)
    assert day_start(c, end_utc - timedelta(microseconds=1)) == start_utc
    assert day_start(c, end_utc) == end_utc  # the next local day begins exactly `hours` later
    assert day_start(c, warsaw(*day, 12, 0)) == start_utc


def test_local_day_start_where_midnight_is_skipped() -> None:
    # Santiago de Chile springs forward at midnight (7 Sept 2025: 00:00 -04 became 01:00 -03), so that
    # local day has no 00:00 and starts at 01:00 -03: 04:00 UTC, the first instant of the day.
    c = campaign(timezone="America/Santiago")
    assert day_start(c, utc(2025, 9, 7, 15, 0)) == utc(2025, 9, 7, 4, 0)
    assert day_start(c, utc(2025, 9, 7, 4, 0)) == utc(2025, 9, 7, 4, 0)
    assert day_start(c, utc(2025, 9, 7, 3, 59)) == utc(2025, 9, 6, 4, 0)  # 23:59 -04 on the 6th
    # The next day starts at 00:00 -03, so the 7th is 23 hours long.
    assert day_start(c, utc(2025, 9, 8, 12, 0)) == utc(2025, 9, 8, 3, 0)


# --- next_window_open ----------------------------------------------------------------------------


def test_next_window_open() -> None:
    c = campaign()
    now = warsaw(2025, 3, 3, 10, 0)
    assert next_window_open(c, now) == now  # open now
    assert next_window_open(c, warsaw(2025, 3, 3, 8, 0)) == warsaw(2025, 3, 3, 9, 0)
    assert next_window_open(c, warsaw(2025, 3, 3, 17, 30)) == warsaw(2025, 3, 4, 9, 0)
    assert next_window_open(c, warsaw(2025, 3, 8, 12, 0)) == warsaw(2025, 3, 10, 9, 0)  # Saturday -> Monday
    # Across the spring change: Friday evening -> Monday 09:00 CEST (07:00 UTC).
    assert next_window_open(c, utc(2025, 3, 28, 18, 0)) == utc(2025, 3, 31, 7, 0)
