"""The database's clock: leases, pacing, daily limits and windows all read it, never the host's.

Asking the server for every timestamp would add a round trip to each claim, so the clock samples the
server's time now and then and advances it with the local monotonic clock in between: senders on
hosts with skewed wall clocks still agree to within network latency.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, text

RESYNC_SECONDS = 30.0


class Clock(Protocol):
    def now(self) -> datetime: ...


class DatabaseClock:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._base: datetime | None = None
        self._base_mono = 0.0

    def _sample(self) -> datetime:
        if self._engine.dialect.name == "sqlite":
            # SQLite's clock is this host's clock: the database file lives here.
            return datetime.now(UTC)
        with self._engine.connect() as conn:
            value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(UTC)

    def now(self) -> datetime:
        mono = time.monotonic()
        if self._base is None or mono - self._base_mono > RESYNC_SECONDS:
            self._base, self._base_mono = self._sample(), time.monotonic()
            mono = self._base_mono
        return self._base + timedelta(seconds=mono - self._base_mono)


class FixedClock:
    """For tests: a clock that reads what it is told (optionally ticking from there)."""

    def __init__(self, at: datetime, ticking: bool = True) -> None:
        self._at, self._mono, self._ticking = at, time.monotonic(), ticking

    def now(self) -> datetime:
        if not self._ticking:
            return self._at
        return self._at + timedelta(seconds=time.monotonic() - self._mono)

    def set(self, at: datetime) -> None:
        self._at, self._mono = at, time.monotonic()
