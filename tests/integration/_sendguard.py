"""Small helpers for the fault, pause, lock and pacing integration tests (on top of helpers.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sender.db import make_engine
from tests.conftest import run_cli
from tests.integration.helpers import CAMPAIGN, kill_all, lead_email, poll_until, sql_rows, start_sender, tail

# A sender under test ticks five times a second.
TICK = ["--interval", "0.2"]


def seed(
    db_url: str,
    n_leads: int,
    *,
    workdir: Path,
    toml_extra: str = "",
    name: str = CAMPAIGN,
    start: bool = True,
) -> list[str]:
    """helpers.seed_campaign without three process start-ups: the same files and the same functions
    `campaign create`, `leads import` and `campaign start` call, run in this process."""
    from sender import campaigns
    from sender.campaign_file import load_campaign_file
    from sender.clock import DatabaseClock
    from sender.enroll import import_leads

    workdir.mkdir(parents=True, exist_ok=True)
    campaign_file = workdir / f"{name}.toml"
    campaign_file.write_text(
        f'name = "{name}"\nfrom = "Ana Nowak <ana@example.com>"\n{toml_extra}\n'
        '[[variants]]\nletter = "A"\nweight = 1\nsubject = "Hello {{ first_name }}"\n'
        'body = "Hi {{ first_name }}, this is variant A."\n'
        '[[variants]]\nletter = "B"\nweight = 1\nsubject = "Hi {{ first_name }}"\n'
        'body = "Hello {{ first_name }}, this is variant B."\n',
        encoding="utf-8",
    )
    emails = [lead_email(i) for i in range(n_leads)]
    data = ("email,first_name\n" + "".join(f"{e},Lead{i}\n" for i, e in enumerate(emails))).encode()
    engine = make_engine(db_url)
    try:
        now = DatabaseClock(engine).now()
        campaigns.create_or_update(engine, load_campaign_file(campaign_file), update_existing=False, now=now)
        result = import_leads(engine, name, data, source="leads.csv", now=now)
        assert (result.enrolled, result.rejected) == (n_leads, []), result
        if start:
            campaigns.start(engine, name, actor="test:seed", reason=None, now=now)
    finally:
        engine.dispose()
    return emails


def enrollments(db_url: str, name: str = CAMPAIGN) -> dict[str, tuple[str, str | None, int]]:
    """email -> (status, reason, attempts), straight from the queue table."""
    rows = sql_rows(
        db_url,
        "SELECT l.email, cl.status, cl.reason, cl.attempts FROM campaign_lead AS cl"
        " JOIN lead AS l ON l.id = cl.lead_id JOIN campaign AS c ON c.id = cl.campaign_id"
        " WHERE c.name = :name",
        {"name": name},
    )
    return {email: (status, reason, attempts) for email, status, reason, attempts in rows}


def counts(db_url: str, name: str = CAMPAIGN) -> dict[str, int]:
    """Enrollment status -> count (only the states present)."""
    out: dict[str, int] = {}
    for status, _, _ in enrollments(db_url, name).values():
        out[status] = out.get(status, 0) + 1
    return out


def ok(result: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def cli_json(args: list[str], env: dict[str, str]) -> object:
    return json.loads(ok(run_cli([*args, "--json"], env), " ".join(args)).stdout)


def leads(env: dict[str, str], campaign: str) -> dict[str, dict]:
    """email -> the `leads list --json` row."""
    rows = cli_json(["leads", "list", campaign], env)
    assert isinstance(rows, list)
    return {row["email"]: row for row in rows}


def send_log(db_url: str, email: str) -> list[tuple]:
    """(status, smtp_code, instance_id) of every attempt for one address, in order."""
    return sql_rows(
        db_url,
        "SELECT sl.status, sl.smtp_code, sl.instance_id FROM send_log AS sl JOIN lead AS l ON l.id = sl.lead_id"
        " WHERE l.email = :email ORDER BY sl.id",
        {"email": email},
    )


class Slow:
    """A faults hook that makes the peer take `delay` seconds to accept each message's data (an ordinary
    server's queue write and filters). Set `.delay = 0` once the test no longer needs a slow peer."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, rcpt: str, phase: str, nth: int) -> str | None:
        if phase == "data_end" and self.delay > 0:
            time.sleep(self.delay)  # in the peer's server thread: the peer is slow, the test does not wait
        return None


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, log_file: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all([proc])
        raise AssertionError(
            f"sender pid {proc.pid} still running after {timeout}s:\n{tail(log_file)}"
        ) from None


def terminate(proc: subprocess.Popen[bytes], timeout: float, log_file: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    return wait_exit(proc, timeout, log_file)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log_file: Path | None = None) -> None:
    if not poll_until(predicate, timeout):
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}" + (f":\n{tail(log_file)}" if log_file else "")
        )


@contextmanager
def senders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collects started senders; any still running when the block ends (a failed test) is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        kill_all(procs)


def spawn(
    procs: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    lock_file: Path,
    args: list[str],
    log_file: Path,
) -> subprocess.Popen[bytes]:
    proc = start_sender(env, lock_file, args, log_file=log_file)
    procs.append(proc)
    return proc


def instance_of(db_url: str, pid: int) -> tuple:
    """(id, slot, heartbeat_at, stopped_at, started_at) of the sender_instance row of a process; the times
    are datetimes on PostgreSQL and ISO text on SQLite (both compare in time order)."""
    rows = sql_rows(
        db_url,
        "SELECT id, slot, heartbeat_at, stopped_at, started_at FROM sender_instance WHERE pid = :pid",
        {"pid": pid},
    )
    assert len(rows) <= 1, rows
    return rows[0] if rows else ()


def midday_timezone(now: datetime | None = None) -> str:
    """A fixed-offset zone where it is now about noon: a daily limit test never straddles local midnight."""
    offset = 12 - (now or datetime.now(UTC)).hour  # hours east of UTC, -11..+12: all exist as Etc/GMT zones
    # POSIX-style names: Etc/GMT-2 is UTC+2.
    return "Etc/UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
