"""The dashboard's data, without Streamlit: one `load_<page>_data(engine, ...)` per page, plus pure helpers.

Each page wraps its loader in `st.cache_data` (dashboard_ui.py); the benchmark (bench/) calls the
loaders directly to time each page's data load. Every aggregation runs in SQL (reports.py); the few
listings kept here (audit trail, sender instances, unknown sends) are plain index-friendly SELECTs under
a LIMIT, so no page ever pulls the send log into pandas.

Also here, because they must be testable without a browser: the ETA estimate, the CSV formula
neutralisation for downloads, and the local sender controls of the Senders page (start a detached
`sendguard run`, stop it with SIGTERM), which lean on the sender's file lock so a second click or a
Streamlit rerun can never become a second sender.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time as time_module
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, Integer, String, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

import reports
from sender.clock import RESYNC_SECONDS, DatabaseClock
from sender.config import Settings
from sender.locks import SenderFileLock

_TS = UTCDateTime()

EVENTS_LIMIT = 200
SENDERS_LIMIT = 200
REVIEW_LIMIT = 500
DETAIL_LIMIT = 500
CAMPAIGN_NAMES_LIMIT = 1000
ETA_HORIZON_DAYS = 366


# One clock per engine, kept as each sender keeps its own: sampled from the server every
# sender.clock.RESYNC_SECONDS and advanced with the monotonic clock in between, so a page's time range
# costs no round trip (on PostgreSQL, a pool checkout and a query per script run before).
# Per engine: (server time, local monotonic time) of the last sample; weak keys and no reference back,
# so a disposed engine is not kept alive with its pool.
_CLOCK_SAMPLES: weakref.WeakKeyDictionary[Engine, tuple[datetime, float]] = weakref.WeakKeyDictionary()


def db_now(engine: Engine) -> datetime:
    """The database's clock (DESIGN.md: leases, pacing and windows use it, never the host's)."""
    sample = _CLOCK_SAMPLES.get(engine)
    if sample is None or time_module.monotonic() - sample[1] > RESYNC_SECONDS:
        # two script threads racing here each sample once: harmless, both samples are right
        sample = _CLOCK_SAMPLES[engine] = (DatabaseClock(engine).now(), time_module.monotonic())
    return sample[0] + timedelta(seconds=time_module.monotonic() - sample[1])


# --- Campaigns -----------------------------------------------------------------------------------


@dataclass
class CampaignsData:
    overview: pd.DataFrame  # reports.campaign_overview + progress, pacing, eta, eta_note
    events: pd.DataFrame  # audit trail, newest first (EVENT_COLUMNS)
    now: datetime


EVENT_COLUMNS = ["time", "campaign", "kind", "actor", "reason", "lead", "instance"]

# The audit trail, newest first. With a campaign it is a range on ix_campaign_event_campaign_time.
_EVENTS = """
SELECT e.created_at AS time, c.name AS campaign, e.kind, e.actor, e.reason, l.email AS lead,
       e.instance_id AS instance
FROM campaign_event AS e
JOIN campaign AS c ON c.id = e.campaign_id
LEFT JOIN lead AS l ON l.id = e.lead_id
{where}
ORDER BY e.created_at DESC, e.id DESC
LIMIT :limit
"""
_EVENT_TYPES = dict(time=_TS, campaign=String, kind=String, actor=String, reason=String, lead=String,
                    instance=String)  # fmt: skip


def campaign_events(engine: Engine, campaign: str | None = None, limit: int = EVENTS_LIMIT) -> pd.DataFrame:
    where = "WHERE e.campaign_id = (SELECT id FROM campaign WHERE name = :campaign)" if campaign else ""
    stmt = text(_EVENTS.format(where=where)).columns(**_EVENT_TYPES)
    with reports.reading(engine) as conn:
        rows = conn.execute(stmt, {"campaign": campaign, "limit": int(limit)}).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=EVENT_COLUMNS)  # see reports._frame


_NAMES = text("SELECT name FROM campaign ORDER BY name LIMIT :limit")


def campaign_names(engine: Engine) -> list[str]:
    """For the pickers: campaign names (unique index on campaign.name)."""
    with reports.reading(engine) as conn:
        return list(conn.execute(_NAMES, {"limit": CAMPAIGN_NAMES_LIMIT}).scalars())


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def describe_pacing(row: Mapping[str, Any]) -> str:
    """One line for the table: interval (+ jitter), daily limit, window and its timezone."""
    row = _clean(row)
    parts = []
    interval, jitter = float(row["min_interval_seconds"] or 0), float(row["jitter_seconds"] or 0)
    if interval or jitter:
        parts.append(f"every {interval:g} s" + (f" (+0-{jitter:g} s jitter)" if jitter else ""))
    else:
        parts.append("no interval")
    if row["daily_limit"] is not None:
        parts.append(f"max {int(row['daily_limit'])}/day")
    days = _window_days(row["window_days"])
    if days is not None or (row["window_start"] and row["window_end"]):
        shown_days = "every day" if days is None else ",".join(_DAY_NAMES[d] for d in sorted(days))
        hours = (
            f" {row['window_start']}-{row['window_end']}" if row["window_start"] and row["window_end"] else ""
        )
        parts.append(f"window {shown_days}{hours}")
    parts.append(str(row["timezone"] or "UTC"))
    return ", ".join(parts)


def _present(value: object) -> bool:
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """A DataFrame row with pandas' missing markers (NaN, NaT, NA) back to None."""
    return {k: (v if _present(v) else None) for k, v in row.items()}


def _window_days(value: str | None) -> set[int] | None:
    if not value:
        return None
    return {int(d) for d in str(value).split(",") if d.strip() != ""}


def _hhmm(value: str) -> time:
    hours, minutes = str(value).split(":")
    return time(int(hours), int(minutes))


def estimate_eta(
    remaining: int,
    now: datetime,
    *,
    interval_seconds: float,
    sends_last_hour: int,
    daily_limit: int | None,
    timezone: str,
    window_days: str | None,
    window_start: str | None,
    window_end: str | None,
    horizon_days: int = ETA_HORIZON_DAYS,
) -> datetime | None:
    """When the last of `remaining` enrollments would be claimed if a sender keeps up from `now`.

    A simple, deliberately optimistic estimate, documented on the page: the rate is the campaign's
    pacing (one send per min_interval + half the jitter, the mean of its uniform draw), or, with no
    interval configured, the rate seen over the last hour; sends happen only inside the sending window
    (days + hours in the campaign's timezone, the same rule as sender/pacing.py), at most daily_limit
    per local day, and today's limit is taken as unused (the overview does not count today's sends).
    Retries, failures and senders being down are ignored. None: no basis for an estimate (no interval
    and nothing sent in the last hour), or not within `horizon_days`.
    """
    if remaining <= 0:
        return now
    if interval_seconds > 0:
        rate = 1.0 / interval_seconds
    elif sends_last_hour > 0:
        rate = sends_last_hour / 3600.0
    else:
        return None
    zone = ZoneInfo(timezone or "UTC")
    days = _window_days(window_days)
    start_t = _hhmm(window_start) if window_start and window_end else time(0)
    end_t = _hhmm(window_end) if window_start and window_end else None
    left = float(remaining)
    first_day: date = now.astimezone(zone).date()
    for offset in range(horizon_days + 1):
        day = first_day + timedelta(days=offset)
        if days is not None and day.weekday() not in days:
            continue
        open_at = datetime.combine(day, start_t, tzinfo=zone)
        close_at = (
            datetime.combine(day, end_t, tzinfo=zone)
            if end_t is not None
            else datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        )
        open_at = max(open_at, now)
        if close_at <= open_at:
            continue
        capacity = (close_at - open_at).total_seconds() * rate
        if daily_limit is not None:
            capacity = min(capacity, float(daily_limit))
        if left <= capacity:
            return (open_at + timedelta(seconds=left / rate)).astimezone(UTC)
        left -= capacity
    return None


def _with_progress_and_eta(overview: pd.DataFrame, now: datetime) -> pd.DataFrame:
    df = overview.copy()
    done = df["enrolled"] - df["queued"] - df["sending"]
    df["progress"] = (done / df["enrolled"].where(df["enrolled"] > 0)).fillna(0.0).astype(float)
    pacing, etas, notes = [], [], []
    for row in map(_clean, df.to_dict("records")):
        pacing.append(describe_pacing(row))
        remaining = int(row["queued"]) + int(row["sending"])
        eta: datetime | None = None
        if remaining == 0:
            note = "done" if row["enrolled"] else "no leads"
        elif row["status"] != "active":
            note = f"{row['status']}: not sending"
        else:
            eta = estimate_eta(
                remaining,
                now,
                interval_seconds=float(row["min_interval_seconds"] or 0)
                + float(row["jitter_seconds"] or 0) / 2,
                sends_last_hour=int(row["sends_last_hour"]),
                daily_limit=int(row["daily_limit"]) if row["daily_limit"] is not None else None,
                timezone=row["timezone"] or "UTC",
                window_days=row["window_days"],
                window_start=row["window_start"],
                window_end=row["window_end"],
            )
            note = "estimate" if eta is not None else "no pacing and no sends in the last hour"
        etas.append(eta)
        notes.append(note)
    df["pacing"] = pacing
    df["eta"] = pd.to_datetime(pd.Series(etas, index=df.index, dtype="object"), utc=True)
    df["eta_note"] = notes
    df["breaker"] = [auto_paused_by(s, p) for s, p in zip(df["status"], df["paused_by"], strict=True)]
    return df


def auto_paused_by(status: object, paused_by: object) -> str:
    """The circuit breaker that paused a campaign (sender/breakers.py), "" when none did."""
    if status == "paused" and isinstance(paused_by, str) and paused_by.startswith("breaker:"):
        return paused_by.removeprefix("breaker:")
    return ""


def load_campaigns_data(
    engine: Engine,
    campaign: str | None = None,
    *,
    now: datetime | None = None,
    events_limit: int = EVENTS_LIMIT,
) -> CampaignsData:
    """Campaigns page: every campaign (counts, progress, sends in the last hour, pacing, ETA) and the
    audit trail of `campaign` (all campaigns when None), newest first, at most `events_limit` rows."""
    now = now or db_now(engine)
    overview = reports.campaign_overview(engine, now=now)
    return CampaignsData(
        overview=_with_progress_and_eta(overview, now),
        events=campaign_events(engine, campaign, events_limit),
        now=now,
    )


# --- Timeline ------------------------------------------------------------------------------------


@dataclass
class TimelineData:
    by_outcome: pd.DataFrame  # bucket, campaign, outcome, sends
    by_instance: pd.DataFrame  # bucket, instance, host, pid, sends, attempts
    bucket_seconds: int


def load_timeline_data(
    engine: Engine,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TimelineData:
    """Timeline page: attempts per bucket by outcome and by sender instance over [since, until).
    Raises reports.TooManyBuckets when the bucket is too small for the range."""
    kwargs = dict(campaign=campaign, bucket_seconds=bucket_seconds, since=since, until=until)
    with reports.reading(engine) as conn:  # one pool checkout for both reads
        return TimelineData(
            # all campaigns: summed in SQL (the chart stacks outcomes, not campaigns)
            by_outcome=reports.sends_timeline(conn, by="outcome" if campaign else "total", **kwargs),  # type: ignore[arg-type]
            by_instance=reports.sends_timeline(conn, by="instance", **kwargs),  # type: ignore[arg-type]
            bucket_seconds=bucket_seconds,
        )


# --- Duplicates ----------------------------------------------------------------------------------


@dataclass
class DuplicatesData:
    summary: dict[str, Any]  # `report duplicates --json`
    buckets: pd.DataFrame  # bucket (aware UTC), sends, duplicate_sends, instances
    prevented: pd.DataFrame  # guard firings per bucket (live only): bucket, campaign, instance, prevented
    by_instance: pd.DataFrame  # reports.INSTANCE_COLUMNS
    details: pd.DataFrame  # reports.DETAIL_COLUMNS, at most detail_limit rows


def load_duplicates_data(
    engine: Engine,
    source: reports.Source = reports.LIVE,
    campaign: str | None = None,
    bucket_seconds: int = 600,
    kind: str = "any",
    detail_limit: int = DETAIL_LIMIT,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DuplicatesData:
    """Duplicates page, over the sends in [since, until) (all time when both are None): the summary (same
    numbers as `sendguard report duplicates --json --since/--until`), buckets with
    the sender instances active in each, attribution per instance and the drill-down rows of `kind`.
    Raises UsageError for an unknown label or campaign (a typo must not read as "no duplicates")."""
    with reports.reading(engine) as conn:  # one pool checkout for the page's reads
        return _duplicates_data(conn, source, campaign, bucket_seconds, kind, detail_limit, since, until)


def _duplicates_data(
    conn: Connection,
    source: reports.Source,
    campaign: str | None,
    bucket_seconds: int,
    kind: str,
    detail_limit: int,
    since: datetime | None,
    until: datetime | None,
) -> DuplicatesData:
    reports.check_source(conn, source, campaign)
    span = {"since": since, "until": until}
    summary = reports.duplicate_summary(
        conn, source, campaign=campaign, bucket_seconds=bucket_seconds, **span
    )
    buckets = pd.DataFrame(summary["buckets"], columns=["start", "sends", "duplicate_sends", "instances"])
    buckets = buckets.rename(columns={"start": "bucket"})
    buckets["bucket"] = pd.to_datetime(buckets["bucket"], utc=True, format="ISO8601")
    prevented = (
        reports.prevented_timeline(conn, campaign, bucket_seconds, since, until)
        if source.live
        else pd.DataFrame(columns=["bucket", "campaign", "instance", "prevented"])
    )
    return DuplicatesData(
        summary=summary,
        buckets=buckets,
        prevented=prevented,
        by_instance=reports.duplicates_by_instance(conn, source, campaign, **span),
        details=reports.duplicate_details(
            conn,
            source,
            kind,  # type: ignore[arg-type]
            limit=detail_limit,
            campaign=campaign,
            **span,
        ),
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy safe to open in a spreadsheet: text cells starting with = + - @ (or tab/CR, OWASP's list)
    get a leading apostrophe, so a lead field like `=HYPERLINK(...)` is shown, never evaluated."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return out


def csv_bytes(df: pd.DataFrame) -> bytes:
    # CRLF rows (RFC 4180) also make the csv writer quote a cell holding a lone CR: with pandas' "\n"
    # it wrote the CR bare, and a spreadsheet started a new row there, e.g. with an unneutralised
    # "=1+1" from "x\r=1+1" (security pass, tests/test_security.py).
    return neutralise_formulas(df).to_csv(index=False, lineterminator="\r\n").encode("utf-8")


# --- Import --------------------------------------------------------------------------------------


def load_import_data(engine: Engine) -> pd.DataFrame:
    """Import page: the imported logs (label, rows, first_at, last_at); index-only on the label index."""
    return reports.imported_labels(engine)


# --- Senders -------------------------------------------------------------------------------------

SENDER_COLUMNS = ["instance", "host", "pid", "version", "started_at", "heartbeat_at", "heartbeat_age_s",
                  "state", "slot", "claims", "stopped_at", "lock_file"]  # fmt: skip

# Instances that run or ran within the last day, newest first. `claims`: enrollments the instance holds
# right now (status sending: ix_campaign_lead_lease holds exactly those rows, the ones in flight).
_SENDERS = text("""
SELECT si.id, si.host, si.pid, si.version, si.started_at, si.heartbeat_at, si.stopped_at, si.slot,
       si.lock_file,
       (SELECT count(*) FROM campaign_lead AS cl WHERE cl.status = 'sending' AND cl.claimed_by = si.id)
           AS claims
FROM sender_instance AS si
WHERE si.stopped_at IS NULL OR si.heartbeat_at >= :since
ORDER BY si.started_at DESC
LIMIT :limit
""").bindparams(bindparam("since", type_=_TS)).columns(
    id=String, host=String, pid=Integer, version=String, started_at=_TS, heartbeat_at=_TS, stopped_at=_TS,
    slot=Integer, lock_file=String, claims=Integer,
)  # fmt: skip


def load_senders_data(
    engine: Engine, lease_seconds: float = 300.0, *, now: datetime | None = None, limit: int = SENDERS_LIMIT
) -> pd.DataFrame:
    """Senders page: each instance seen within the last day. `state` is alive (heartbeat within one
    lease, the rule of `sendguard status`), stale (not stopped, heartbeat older: crashed or hung; its
    claims are reaped once their lease expires) or stopped."""
    now = now or db_now(engine)
    with reports.reading(engine) as conn:
        rows = conn.execute(_SENDERS, {"since": now - timedelta(days=1), "limit": int(limit)}).all()
    out = []
    for r in rows:
        age = (now - r.heartbeat_at).total_seconds() if r.heartbeat_at else None
        if r.stopped_at is not None:
            state = "stopped"
        elif age is not None and age <= lease_seconds:
            state = "alive"
        else:
            state = "stale"
        out.append({
            "instance": r.id, "host": r.host, "pid": r.pid, "version": r.version, "started_at": r.started_at,
            "heartbeat_at": r.heartbeat_at, "heartbeat_age_s": round(age, 1) if age is not None else None,
            "state": state, "slot": r.slot, "claims": r.claims, "stopped_at": r.stopped_at,
            "lock_file": r.lock_file,
        })  # fmt: skip
    return pd.DataFrame(out, columns=SENDER_COLUMNS)


@dataclass(frozen=True)
class LocalSender:
    """The sender named by this host's lock file's pid sidecar, as far as /proc tells."""

    lock_file: str
    pid: int | None  # from the pid sidecar (None: no sender has it, or it stopped cleanly)
    alive: bool  # that pid exists
    is_sender: bool | None  # and runs a sendguard sender (None: cannot tell without /proc)

    @property
    def running(self) -> bool:
        return self.alive and self.is_sender is not False

    @property
    def log_file(self) -> str:
        return sender_log_path(self.lock_file)


def sender_log_path(lock_file: str) -> str:
    """Where a sender started from the dashboard writes its output: beside its lock file."""
    path = Path(lock_file)
    name = path.name[: -len(".lock")] if path.name.endswith(".lock") else path.name
    return str(path.with_name(name + ".log"))


def lock_is_held(lock_file: str) -> bool:
    """Whether a process holds the lock right now: try it without waiting and let go at once. Only
    used right before starting a sender (the authoritative check); the page's display reads the pid
    sidecar instead, so merely looking never holds the lock while a sender tries to take it."""
    if not Path(lock_file).exists():
        return False
    probe = FileLock(lock_file, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False  # unreadable lock file: no sender can hold it either
    probe.release()
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _looks_like_sender(pid: int) -> bool | None:
    """True when /proc says `pid` runs `sendguard run` / `python -m sender run`; None without /proc."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False if Path("/proc/self").exists() else None  # gone, or no /proc on this system
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    names = {Path(a).name for a in args}
    return "run" in args and ("sender" in args or "sendguard" in names)


def local_sender(lock_file: str) -> LocalSender:
    """Read-only: the pid sidecar (written by a sender once it holds the lock, removed when it lets go)
    and /proc. A SIGKILLed sender leaves its sidecar behind: its pid is then dead, or reused by a
    process that is not a sender, and `running` is False either way."""
    pid = SenderFileLock(lock_file).holder_pid()
    if pid is None:
        return LocalSender(lock_file, None, alive=False, is_sender=None)
    alive = _alive(pid)
    return LocalSender(lock_file, pid, alive=alive, is_sender=_looks_like_sender(pid) if alive else False)


@dataclass(frozen=True)
class ControlResult:
    outcome: str  # started | running | refused | exited | signalled
    message: str
    pid: int | None = None
    log_tail: str = ""


def _tail(path: str, max_bytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def start_local_sender(
    settings: Settings, *, env: Mapping[str, str] | None = None, cwd: str | None = None, settle: float = 10.0
) -> ControlResult:
    """Start `python -m sender run` as a detached background process on this host.

    Safe to call twice (a double click, a rerun, two tabs): when the lock is held it says who holds it
    and starts nothing, and should two calls race past that check, the second sender exits at once with
    code 3 because the lock is taken (DESIGN.md: the file lock stops a hot-reloaded twin). Waits up to
    `settle` seconds for the child to take the lock (its pid appears in the sidecar) or to exit. The
    child gets the dashboard's environment, with the database URL and lock file the dashboard resolved
    (so the check above and the sender agree) and without the dashboard password, which it does not
    need.
    """
    lock_file = settings.resolved_lock_file()
    if not settings.smtp_url:
        return ControlResult(
            "refused",
            "SENDGUARD_SMTP_URL is not set in the dashboard's environment, so a sender started from here "
            "would have nowhere to send: set it (e.g. smtp://127.0.0.1:2525 for `sendguard sink`) and "
            "restart the dashboard, or start the sender from a shell with `sendguard run`.",
        )
    if lock_is_held(lock_file):
        holder = SenderFileLock(lock_file).holder_pid()
        return ControlResult(
            "running", f"A sender is already running (pid {holder or 'unknown'}): nothing started.", holder
        )
    child_env = dict(os.environ if env is None else env)
    child_env.pop("SENDGUARD_DASHBOARD_PASSWORD", None)
    child_env["SENDGUARD_DATABASE_URL"] = settings.database_url
    child_env["SENDGUARD_LOCK_FILE"] = lock_file
    child_env["PYTHONUNBUFFERED"] = "1"
    log_path = sender_log_path(lock_file)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sender", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,  # its own session: stopping the dashboard leaves it running
            close_fds=True,
        )
    # Reap it whenever it exits, so a long-lived dashboard never accumulates zombies.
    threading.Thread(target=proc.wait, name=f"reap-sender-{proc.pid}", daemon=True).start()
    sidecar = SenderFileLock(lock_file)
    deadline = time_module.monotonic() + settle
    while time_module.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if code == 3:
                holder = sidecar.holder_pid()
                return ControlResult(
                    "running",
                    f"A sender is already running (pid {holder or 'unknown'}): nothing started.",
                    holder,
                )
            return ControlResult(
                "exited",
                f"The sender exited at once with code {code}; its output:",
                proc.pid,
                _tail(log_path),
            )
        if sidecar.holder_pid() == proc.pid:
            return ControlResult(
                "started", f"Sender started (pid {proc.pid}); output goes to {log_path}.", proc.pid
            )
        time_module.sleep(0.1)
    return ControlResult(
        "started",
        f"Sender process started (pid {proc.pid}) but has not taken the lock yet; watch {log_path}.",
        proc.pid,
    )


def stop_local_sender(lock_file: str) -> ControlResult:
    """SIGTERM to the sender named by this host's lock file: it finishes the message in flight, releases
    its claims and locks and exits 0. Only a live pid that runs a sendguard sender is signalled, so a
    stale pid file can never make the dashboard kill an unrelated process."""
    current = local_sender(lock_file)
    if current.pid is None or not current.alive:
        return ControlResult("refused", "No sender is running with this host's lock file: nothing to stop.")
    if current.is_sender is False:
        return ControlResult(
            "refused",
            f"pid {current.pid} (from the lock's pid file) is not a sendguard sender: not signalled.",
            current.pid,
        )
    try:
        os.kill(current.pid, signal.SIGTERM)
    except ProcessLookupError:
        return ControlResult("refused", f"pid {current.pid} has already exited.", current.pid)
    except PermissionError:
        return ControlResult(
            "refused", f"Not allowed to signal pid {current.pid} (another user).", current.pid
        )
    return ControlResult(
        "signalled",
        f"SIGTERM sent to pid {current.pid}: it finishes the message in flight, then stops.",
        current.pid,
    )


# --- Review --------------------------------------------------------------------------------------


@dataclass
class ReviewData:
    unknown: pd.DataFrame  # REVIEW_COLUMNS, oldest first, at most `limit` rows
    total: int  # all unknown sends (may exceed the rows shown)


REVIEW_COLUMNS = ["id", "campaign", "email", "step", "variant", "message_id", "instance", "host", "pid",
                  "reserved_at", "transmit_at", "finished_at", "smtp_code", "smtp_reply", "attempt"]  # fmt: skip

# sender/review.py's list, with a LIMIT and the total in the same scan (the window counts the filtered
# rows before the LIMIT applies; `unknown` rows are few: at most one per crash mid-transmission).
_UNKNOWN = text("""
SELECT sl.id, c.name AS campaign, l.email, sl.step, sl.variant_letter AS variant, sl.message_id,
       sl.instance_id AS instance, sl.host, sl.pid, sl.created_at AS reserved_at, sl.transmit_at,
       sl.finished_at, sl.smtp_code, sl.smtp_reply, sl.attempt, count(*) OVER () AS total
FROM send_log AS sl
JOIN campaign AS c ON c.id = sl.campaign_id
JOIN lead AS l ON l.id = sl.lead_id
WHERE sl.status = 'unknown'
ORDER BY sl.id
LIMIT :limit
""").columns(
    id=Integer, campaign=String, email=String, step=Integer, variant=String, message_id=String,
    instance=String, host=String, pid=Integer, reserved_at=_TS, transmit_at=_TS, finished_at=_TS,
    smtp_code=Integer, smtp_reply=String, attempt=Integer, total=Integer,
)  # fmt: skip


def load_review_data(engine: Engine, limit: int = REVIEW_LIMIT) -> ReviewData:
    """Review page: `unknown` sends (possibly delivered) with their SMTP context, oldest first."""
    with reports.reading(engine) as conn:
        rows = conn.execute(_UNKNOWN, {"limit": int(limit)}).all()
    total = int(rows[0].total) if rows else 0
    return ReviewData(unknown=pd.DataFrame([r[:-1] for r in rows], columns=REVIEW_COLUMNS), total=total)
