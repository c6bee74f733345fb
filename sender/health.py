"""`sendguard health`: one verdict for monitoring. Exit 0 healthy, 1 degraded, 2 unhealthy.

Each check returns a Check (level, reason); the verdict is the worst of them. Unhealthy: nothing is
being sent (database unreachable, schema not current, no live sender). Degraded: sending goes on but a
human should look (a campaign auto-paused by a breaker and not acknowledged; `unknown` sends waiting
for review too long).

An auto-pause is acknowledged by `sendguard campaign ack NAME` (a campaign_event of kind
`acknowledged`; the campaign stays paused) or by resuming the campaign.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, Integer, String, bindparam, text
from sqlalchemy.engine import make_url
from sqlmodel.sql.sqltypes import UTCDateTime

from sender.config import Settings, secrets_of
from sender.errors import UsageError

_TS = UTCDateTime()


class Level(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    UNHEALTHY = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    reason: str


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def level(self) -> Level:
        return max((c.level for c in self.checks), default=Level.OK)

    @property
    def exit_code(self) -> int:
        return int(self.level)

    @property
    def verdict(self) -> str:
        return "healthy" if self.level is Level.OK else self.level.label

    def as_json(self) -> dict[str, object]:
        return {
            "status": self.verdict,
            "exit_code": self.exit_code,
            "checks": [{"name": c.name, "level": c.level.label, "reason": c.reason} for c in self.checks],
        }


# --- the SQL (all of it read-only: plain SELECTs on a deferred/readonly connection, so a health probe
# never takes a write lock, never queues behind the sender, and cannot change what it observes) -----

_NEWEST_SENDER = text("""
SELECT id, host, pid, heartbeat_at, stopped_at FROM sender_instance ORDER BY heartbeat_at DESC, id LIMIT 1
""").columns(id=String, host=String, pid=Integer, heartbeat_at=_TS, stopped_at=_TS)

_LIVE_SENDERS = (
    text("""
SELECT count(*) AS live, count(slot) AS active FROM sender_instance
WHERE stopped_at IS NULL AND heartbeat_at >= :since
""")
    .bindparams(bindparam("since", type_=_TS))
    .columns(live=Integer, active=Integer)
)

# A campaign is auto-paused and unseen while it is paused and the latest of its auto_paused /
# acknowledged / resumed events is the auto-pause (event ids grow with time on both backends).
_UNSEEN_AUTO_PAUSES = text("""
SELECT c.id, c.name, e.created_at, e.actor, e.reason
FROM campaign AS c
JOIN campaign_event AS e ON e.id = (
    SELECT max(e2.id) FROM campaign_event AS e2
    WHERE e2.campaign_id = c.id AND e2.kind IN ('auto_paused', 'acknowledged', 'resumed')
)
WHERE c.status = 'paused' AND e.kind = 'auto_paused'
ORDER BY c.name
""").columns(id=Integer, name=String, created_at=_TS, actor=String, reason=String)

# An `unknown` send dates from when it became unknown (recorded or reaped: finished_at).
_OLD_UNKNOWNS = (
    text("""
SELECT count(*) AS n, min(coalesce(finished_at, transmit_at, created_at)) AS oldest FROM send_log
WHERE status = 'unknown' AND coalesce(finished_at, transmit_at, created_at) < :before
""")
    .bindparams(bindparam("before", type_=_TS))
    .columns(n=Integer, oldest=_TS)
)


# --- checks --------------------------------------------------------------------------------------


def _age(now: datetime, then: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_database(settings: Settings) -> tuple[Check, Engine | None]:
    """Reachable (a SELECT 1 answers). A missing SQLite file is reported, never created."""
    from sender.db import make_engine

    url = make_url(settings.database_url)
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            return Check("database", Level.UNHEALTHY, f"database file {url.database} does not exist"), None
    engine = make_engine(settings.database_url, readonly=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        return Check("database", Level.UNHEALTHY, f"database unreachable: {_describe(exc, settings)}"), None
    return Check("database", Level.OK, f"{backend} database reachable"), engine


def _describe(exc: BaseException, settings: Settings) -> str:
    """The driver's first line (it names host and port, never the password), scrubbed all the same."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    text_ = f"{orig.__class__.__name__}: {first}"[:300]
    for secret in secrets_of(settings):
        text_ = text_.replace(secret, "***")
    return text_


def check_schema(engine: Engine) -> Check:
    from sender.migrate import SCHEMA_REVISION, current_revision, head_revision, stored_revision

    if stored_revision(engine) == SCHEMA_REVISION:  # the usual case, without loading Alembic
        return Check("schema", Level.OK, f"schema at revision {SCHEMA_REVISION}")
    current, head = current_revision(engine), head_revision()
    if current == head:
        return Check("schema", Level.OK, f"schema at revision {head}")
    state = "empty" if current is None else f"at revision {current}"
    return Check(
        "schema",
        Level.UNHEALTHY,
        f"schema is {state}, this sendguard expects {head}: run `sendguard db upgrade`",
    )


def check_senders(conn: Connection, now: datetime, within: float) -> Check:
    live, active = conn.execute(_LIVE_SENDERS, {"since": now - timedelta(seconds=within)}).one()
    if live:
        if not active:
            return Check(
                "sender", Level.DEGRADED, f"{live} live sender(s), all on standby: none holds a DB-lock slot"
            )
        return Check("sender", Level.OK, f"{live} live sender(s), {active} active")
    newest = conn.execute(_NEWEST_SENDER).first()
    if newest is None:
        return Check("sender", Level.UNHEALTHY, "no live sender: none has ever registered")
    if newest.stopped_at is not None:
        last = (
            f"sender {newest.id} ({newest.host} pid {newest.pid}) stopped {_age(now, newest.stopped_at)} ago"
        )
    else:
        last = f"sender {newest.id} ({newest.host} pid {newest.pid}) last heartbeat {_age(now, newest.heartbeat_at)} ago"
    return Check("sender", Level.UNHEALTHY, f"no live sender (heartbeat within {within:g}s): {last}")


def check_auto_pauses(conn: Connection, now: datetime) -> list[Check]:
    return [
        Check(
            "auto_paused",
            Level.DEGRADED,
            f"campaign {row.name!r} auto-paused by {row.actor} {_age(now, row.created_at)} ago ({row.reason}); "
            f"look, then `sendguard campaign ack {row.name}` or `campaign resume {row.name}`",
        )
        for row in conn.execute(_UNSEEN_AUTO_PAUSES)
    ] or [Check("auto_paused", Level.OK, "no unacknowledged auto-paused campaign")]


def check_unknowns(conn: Connection, now: datetime, older_than_hours: float) -> Check:
    n, oldest = conn.execute(_OLD_UNKNOWNS, {"before": now - timedelta(hours=older_than_hours)}).one()
    if n:
        return Check(
            "unknowns",
            Level.DEGRADED,
            f"{n} unknown send(s) older than {older_than_hours:g} h await review (oldest {_age(now, oldest)}): "
            "`sendguard review list`",
        )
    return Check("unknowns", Level.OK, f"no unknown send older than {older_than_hours:g} h")


def check_all(settings: Settings, *, heartbeat_within: float, unknown_older_than_hours: float) -> Report:
    from sender.clock import DatabaseClock

    database, engine = check_database(settings)
    checks = [database]
    if engine is None:
        return Report(checks)
    try:
        checks.append(check_schema(engine))
        if checks[-1].level is not Level.OK:
            return Report(checks)  # the tables may not even exist: nothing more to read
        now = DatabaseClock(engine).now()
        with engine.connect() as conn:
            checks.append(check_senders(conn, now, heartbeat_within))
            checks.extend(check_auto_pauses(conn, now))
            checks.append(check_unknowns(conn, now, unknown_older_than_hours))
    except Exception as exc:  # the database went away mid-check: that is the verdict, not a traceback
        checks.append(Check("database", Level.UNHEALTHY, f"database error: {_describe(exc, settings)}"))
    finally:
        engine.dispose()
    return Report(checks)


def render(report: Report) -> str:
    """The verdict, then one line per check, worst first: `LEVEL: reason`."""
    lines = [report.verdict]
    lines += [f"{c.level.label}: {c.reason}" for c in sorted(report.checks, key=lambda c: -c.level)]
    return "\n".join(lines)


# --- acknowledgement -----------------------------------------------------------------------------


def acknowledge(engine: Engine, name: str, *, actor: str, reason: str | None, now: datetime) -> None:
    """Record that a human has seen a campaign's auto-pause (it stays paused): clears the health warning."""
    from sender.campaigns import get_campaign, record_event

    with engine.begin() as conn:
        campaign = get_campaign(conn, name)
        unseen = {row.id for row in conn.execute(_UNSEEN_AUTO_PAUSES)}
        if campaign.id not in unseen:
            raise UsageError(f"campaign {name!r} has no unacknowledged auto-pause (it is {campaign.status})")
        record_event(conn, campaign.id, "acknowledged", actor, reason, now)
