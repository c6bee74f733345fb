"""When a campaign may send: its window and its local day, computed from the database's clock."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from models import Campaign


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def window_open(campaign: Campaign, now: datetime) -> bool:
    """True when `now` (aware) falls inside the campaign's sending window in its own timezone."""
    local = now.astimezone(ZoneInfo(campaign.timezone))
    if campaign.window_days:
        days = {int(d) for d in campaign.window_days.split(",") if d != ""}
        if local.weekday() not in days:
            return False
    if campaign.window_start and campaign.window_end:
        return _hhmm(campaign.window_start) <= local.time() < _hhmm(campaign.window_end)
    return True


def local_day_start(campaign: Campaign, now: datetime) -> datetime:
    """Midnight of the campaign's current local day, as an aware datetime (daily_limit resets then)."""
    zone = ZoneInfo(campaign.timezone)
    local = now.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone)


def next_window_open(campaign: Campaign, now: datetime) -> datetime | None:
    """The next moment the window opens (for status and ETA), None if it never opens."""
    if window_open(campaign, now):
        return now
    zone = ZoneInfo(campaign.timezone)
    local = now.astimezone(zone)
    start = _hhmm(campaign.window_start) if campaign.window_start else time(0)
    for offset in range(0, 8):
        day = local.date() + timedelta(days=offset)
        candidate = datetime.combine(day, start, tzinfo=zone)
        if candidate > local and window_open(campaign, candidate):
            return candidate
    return None
