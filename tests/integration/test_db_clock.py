"""The database's clock, proven with faked host clocks: two real senders whose Python wall clocks are
three hours apart (+3 h and -3 h, via time-machine started from a sitecustomize.py that only these
subprocesses load) still agree on leases, pacing, the daily limit and the sending window, because all
of those read DatabaseClock (sender/clock.py: PostgreSQL's clock_timestamp(), advanced with the
monotonic clock, which the fake does not touch).

PostgreSQL only: it is the backend for senders on several hosts. On SQLite the database lives on the
senders' own host, and the product reads that host's clock by design (README, "Time"); one host has
one clock, so there is no skew between its senders to survive.

Each test has a control run in which the senders read their host clock instead (the same
sitecustomize swaps DatabaseClock's sample for datetime.now), to show that the skew does reach the
senders and that these assertions catch a sender that trusts it.
"""

from __future__ import annotations

import os
import re
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sender import failpoints as fp
from tests.conftest import prepare_database
from tests.integration._sendguard import TICK, enrollments, seed, senders, spawn, wait_exit, wait_for
from tests.integration.helpers import sender_env, sql_rows
from tests.smtp_peer import SmtpPeer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SKEW_HOURS = 3

SITECUSTOMIZE = '''\
"""Test-only (tests/integration/test_db_clock.py): fake this process's host clock."""
import os

_shift = os.environ.get("SG_TEST_CLOCK_SHIFT")
if _shift:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_shift), tick=True).start()
    _probe = os.environ.get("SG_TEST_CLOCK_PROBE")
    if _probe:
        with open(_probe, "w") as f:
            f.write(repr(time.time()))
if os.environ.get("SG_TEST_HOST_CLOCK"):
    from datetime import UTC, datetime

    import sender.clock

    # The control: a sender that trusts its host clock.
    sender.clock.DatabaseClock._sample = lambda self: datetime.now(UTC)
'''


@pytest.fixture
def skewed(tmp_path: Path):
    """skewed(env, hours, name, host_clock=False) -> env for a sender whose host clock is `hours` off."""
    site = tmp_path / "fakeclock"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")

    def make(env: dict[str, str], hours: float, name: str, host_clock: bool = False) -> dict[str, str]:
        out = dict(env)
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
        out["SG_TEST_CLOCK_SHIFT"] = str(hours * 3600)
        out["SG_TEST_CLOCK_PROBE"] = str(tmp_path / f"{name}.clock")
        if host_clock:
            out["SG_TEST_HOST_CLOCK"] = "1"
        return out

    return make


def _assert_skewed(tmp_path: Path, name: str, hours: float) -> None:
    """The sender really ran with its host clock `hours` off (the probe its sitecustomize wrote)."""
    faked = float((tmp_path / f"{name}.clock").read_text())
    real = datetime.now(UTC).timestamp()
    assert abs(faked - real - hours * 3600) < 120, (faked, real)


def _log(db_url: str) -> list[tuple[str, str | None, str]]:
    """(status, smtp_reply, instance_id) of every send_log row, in order."""
    return sql_rows(db_url, "SELECT status, smtp_reply, instance_id FROM send_log ORDER BY id")


def _instance(db_url: str, pid: int) -> str | None:
    rows = sql_rows(db_url, "SELECT id FROM sender_instance WHERE pid = :pid", {"pid": pid})
    return rows[0][0] if rows else None


@pytest.mark.parametrize("host_clock", [False, True], ids=["db-clock", "control-host-clock"])
def test_a_skewed_sender_does_not_reap_a_live_lease(
    host_clock: bool,
    pg_url: str,
    smtp_peer: SmtpPeer,
    tmp_path: Path,
    skewed,
) -> None:
    """A (-3 h) holds a claim with a 30 s lease, frozen (SIGSTOP) between its reservation and the gate,
    while B (+3 h) ticks (each tick reaps) beside it. On the database clock the lease is live: B leaves
    it alone, A resumes, passes the gate and sends. B on its host clock (the control) sees it 3 h
    expired and reaps it at once."""
    prepare_database(pg_url)
    (email,) = seed(pg_url, 1, workdir=tmp_path / "seed")
    base = sender_env(
        dict(os.environ, PYTHONUNBUFFERED="1", SENDGUARD_DATABASE_URL=pg_url),
        tmp_path / "unused.lock",
        smtp_url=smtp_peer.url,
        lease_seconds=30,
        max_senders=2,
    )
    env_a = skewed(base, -SKEW_HOURS, "a")
    env_a["SENDGUARD_FAILPOINTS"] = f"{fp.AFTER_RESERVE}=1*stall(3)"  # long enough to be frozen there
    env_b = skewed(base, +SKEW_HOURS, "b", host_clock=host_clock)
    with senders() as procs:
        a = spawn(procs, env_a, tmp_path / "a.lock", ["--until-idle", *TICK], tmp_path / "a.log")
        wait_for(lambda: _statuses(pg_url) == ["reserved"], 30, "A's reservation", tmp_path / "a.log")
        a.send_signal(signal.SIGSTOP)
        try:
            b = spawn(procs, env_b, tmp_path / "b.lock", ["--until-idle", *TICK], tmp_path / "b.log")
            # A second heartbeat means B's first tick, and with it a reap, is over.
            wait_for(lambda: _ticked_twice(pg_url, b.pid), 60, "B's second tick", tmp_path / "b.log")
            after_b = _statuses(pg_url)
        finally:
            a.send_signal(signal.SIGCONT)
        assert wait_exit(a, 60, tmp_path / "a.log") == 0
        assert wait_exit(b, 60, tmp_path / "b.log") == 0
    _assert_skewed(tmp_path, "a", -SKEW_HOURS)
    _assert_skewed(tmp_path, "b", +SKEW_HOURS)

    log = _log(pg_url)
    assert smtp_peer.per_recipient() == {email: 1}  # never a duplicate: the gate fences either way
    if not host_clock:
        assert after_b == ["reserved"]  # B ticked beside a live lease and left it alone
        # One attempt, A's own, never reaped.
        assert [(s, i) for s, _, i in log] == [("sent", _instance(pg_url, a.pid))]
        assert enrollments(pg_url) == {email: ("sent", None, 1)}
    else:
        assert after_b[:1] == ["deferred"]
        # B reaped A's live claim and sent it itself; A found its token gone at the gate.
        assert [(s, r) for s, r, _ in log][0] == ("deferred", "lease expired before transmission")
        assert [s for s, _, _ in log][1:] == ["sent"] and log[1][2] == _instance(pg_url, b.pid)


def _statuses(db_url: str) -> list[str]:
    return [s for s, _, _ in _log(db_url)]


def _ticked_twice(db_url: str, pid: int) -> bool:
    rows = sql_rows(
        db_url, "SELECT heartbeat_at > started_at FROM sender_instance WHERE pid = :pid", {"pid": pid}
    )
    return bool(rows and rows[0][0])


def _local_one_am_zone(now: datetime) -> str:
    """A fixed-offset zone where it is now 01:xx: three hours either way is another day and outside a
    00:00-03:00 window."""
    offset = 1 - now.hour  # hours east of UTC
    if offset < -12:
        offset += 24
    return (
        "Etc/UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    )  # Etc/GMT-2 = UTC+2


@pytest.mark.parametrize("host_clock", [False, True], ids=["db-clock", "control-host-clock"])
def test_skewed_senders_agree_on_pacing_daily_limit_and_window(
    host_clock: bool,
    pg_url: str,
    smtp_peer: SmtpPeer,
    tmp_path: Path,
    skewed,
) -> None:
    prepare_database(pg_url)
    zone = _local_one_am_zone(datetime.now(UTC))
    extra = (
        f'min_interval_seconds = 1\ndaily_limit = 3\ntimezone = "{zone}"\n'
        'window = { start = "00:00", end = "03:00" }'
    )
    emails = seed(pg_url, 6, workdir=tmp_path / "seed", toml_extra=extra)
    base = sender_env(
        dict(os.environ, PYTHONUNBUFFERED="1", SENDGUARD_DATABASE_URL=pg_url),
        tmp_path / "unused.lock",
        smtp_url=smtp_peer.url,
        lease_seconds=10,
        max_senders=2,
    )
    logs = [tmp_path / "plus.log", tmp_path / "minus.log"]
    with senders() as procs:
        for i, (hours, name) in enumerate([(+SKEW_HOURS, "plus"), (-SKEW_HOURS, "minus")]):
            env = skewed(base, hours, name, host_clock=host_clock)
            spawn(procs, env, tmp_path / f"{name}.lock", ["--until-idle", *TICK], logs[i])
        for proc, log in zip(procs, logs, strict=True):
            assert wait_exit(proc, 90, log) == 0, log.read_text()[-3000:]
    _assert_skewed(tmp_path, "plus", +SKEW_HOURS)
    _assert_skewed(tmp_path, "minus", -SKEW_HOURS)

    states = sorted(s for s, _, _ in enrollments(pg_url).values())
    if host_clock:
        # Each sender thinks the window closed (22:xx and 04:xx local): nothing goes out at all.
        assert states == ["queued"] * 6 and smtp_peer.count() == 0
        return

    # The window is open and the daily limit is three, counted on one clock by both senders.
    assert states == ["queued"] * 3 + ["sent"] * 3
    per_recipient = smtp_peer.per_recipient()
    assert sum(per_recipient.values()) == 3 and set(per_recipient.values()) == {1}
    assert set(per_recipient) <= set(emails)
    # Pacing: one claim per second on the database clock, and on the wire (less latency jitter; see
    # tests/integration/test_pacing.py for the tolerances).
    reserved = sorted(_ts(t) for (t,) in sql_rows(pg_url, "SELECT created_at FROM send_log"))
    claim_gaps = [(b - a).total_seconds() for a, b in zip(reserved, reserved[1:], strict=False)]
    assert len(reserved) == 3 and min(claim_gaps) >= 0.98, claim_gaps
    arrivals = sorted(r.at for r in smtp_peer.received())
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 0.5, arrivals
    # No lease was reaped early, and both senders took part (each in its own DB-lock slot).
    assert all(s == "sent" for s, _, _ in _log(pg_url))
    slots = {int(m) for log in logs for m in re.findall(r"active in slot (\d+)", log.read_text())}
    assert slots == {0, 1}


def _ts(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
