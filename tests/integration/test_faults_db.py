"""The fault catalogue, database half: the database connection or server fails under a real
`sendguard run`, and still no lead gets two messages and none is left in flight. Checked at the real
SMTP peer (tests/smtp_peer.py) and in the database.

End states: S sent, F failed, R retried then sent, U unknown.

Catalogue case -> test (the SMTP half is in test_faults_smtp.py):

6. PostgreSQL connection killed (`pg_terminate_backend`) inside the transaction that records `sent`
   -> S, by the idempotent retry of the record step (sender/sending.py `_record_with_retry`):
   `test_connection_killed_while_recording_sent_is_retried`.
7. PostgreSQL restarted (`pg_ctl restart -m fast`) under load -> senders reconnect, no duplicate,
   every lead terminal: `test_postgres_restart_under_load` (on a dedicated throwaway cluster, so the
   restart cannot hurt other tests).
8. SQLite with six writer processes -> no "database is locked" escapes, one message per lead:
   `test_sqlite_six_writers_never_see_database_is_locked` (the same race on both backends at
   2,000 leads, without the log check: `test_concurrency.py::test_six_senders_send_each_lead_exactly_once`).
9. The same address imported twice with different case and spacing -> one lead, one S, one message:
   `test_same_address_in_other_case_and_spacing_is_one_lead`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sender import campaigns
from sender.clock import DatabaseClock
from sender.db import make_engine
from sender.enroll import import_leads
from tests.conftest import (
    _pg_bindir,
    _pg_required,
    _psycopg_conninfo,
    _start_cluster,
    _stop_cluster,
    prepare_database,
)
from tests.integration._sendguard import (
    TICK,
    Slow,
    counts,
    enrollments,
    seed,
    send_log,
    senders,
    spawn,
    wait_exit,
    wait_for,
)
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, sql_rows, start_sender, tail, wait_all
from tests.smtp_peer import SmtpPeer


def _base_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """What the `sendguard_env` fixture gives, for tests that pick their own database."""
    env = dict(os.environ)
    env.update(
        SENDGUARD_DATABASE_URL=db_url, SENDGUARD_LOCK_FILE=str(tmp_path / "sender.lock"), PYTHONUNBUFFERED="1"
    )
    env.pop("SENDGUARD_FAILPOINTS", None)
    return env


def _psql(admin_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(_psycopg_conninfo(admin_url), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


# --- 6. connection killed while recording `sent` -----------------------------------------------------

STALL = 4.0  # seconds the failpoint holds the record transaction open: the window to kill it in


@pytest.mark.postgres
@pytest.mark.slow
def test_connection_killed_while_recording_sent_is_retried(
    pg_url: str, smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    prepare_database(pg_url)
    emails = seed(pg_url, 2, workdir=tmp_path / "seed")
    env = sender_env(
        _base_env(pg_url, tmp_path),
        tmp_path / "sender.lock",
        smtp_url=smtp_peer.url,
        # After the UPDATEs of the first record transaction, before its COMMIT: stall once.
        failpoints=f"while_recording=1*stall({STALL})",
    )
    log = tmp_path / "run.log"
    database = pg_url.rsplit("/", 1)[1]
    # The sender's connection sitting inside the record transaction (the last statement it ran is
    # the enrollment's UPDATE, the only one that sets last_error).
    find_recorder = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND state = 'idle in transaction' AND query LIKE '%%last_error%%'"
    )
    with senders() as procs:
        proc = spawn(procs, env, tmp_path / "sender.lock", ["--until-idle", *TICK, "--batch", "1"], log)
        wait_for(lambda: bool(_psql(pg_url, find_recorder, (database,))), 30, "the stalled record", log)
        # The message is out, the record is not committed: this is the moment.
        assert smtp_peer.count() == 1
        ((pid,),) = _psql(pg_url, find_recorder, (database,))
        assert _psql(pg_url, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        assert wait_exit(proc, 60, log) == 0, tail(log)

    text = log.read_text()
    assert "recording enrollment" in text and "retrying" in text, tail(log)  # the retry did run
    assert smtp_peer.per_recipient() == dict.fromkeys(emails, 1)
    rows = enrollments(pg_url)
    assert {e: rows[e][0] for e in emails} == dict.fromkeys(emails, "sent"), rows
    assert all(rows[e][2] == 1 for e in emails), rows  # recorded, not re-sent
    for email in emails:
        assert [(s, c) for s, c, _ in send_log(pg_url, email)] == [("sent", 250)]


# --- 7. PostgreSQL restarted under load ----------------------------------------------------------------

RESTART_LEADS = 60
RESTART_SENDERS = 3


@pytest.fixture
def own_pg_cluster() -> Iterator[tuple[str, Path]]:
    """A throwaway cluster of this test's own (admin URL, data dir): restarting it hurts no one else."""
    if _pg_bindir() is None:
        if _pg_required():
            pytest.fail("PostgreSQL binaries not found, and CI or SENDGUARD_REQUIRE_PG is set", pytrace=False)
        pytest.skip("!!! PostgreSQL binaries not found: PostgreSQL restart test skipped !!!")
    url, cluster_dir = _start_cluster()
    try:
        yield url, Path(cluster_dir) / "data"
    finally:
        _stop_cluster(cluster_dir)


def _pg_ctl(data_dir: Path, *args: str, out: Path) -> int:
    """Run pg_ctl as the cluster's owner; its output goes to `out`. Never into a pipe: the postmaster
    it starts would inherit the pipe and keep it open, and waiting for EOF would hang."""
    bindir = _pg_bindir()
    assert bindir is not None
    # -l: the restarted postmaster logs beside the first one's log (scripts/pg-cluster.sh).
    cmd = [f"{bindir}/pg_ctl", "-D", str(data_dir), "-l", str(data_dir.parent / "postgres.log"), *args]
    if os.geteuid() == 0:  # the cluster belongs to `postgres` (scripts/pg-cluster.sh)
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    with open(out, "ab") as fh:
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, timeout=120, check=False
        ).returncode


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_restart_under_load(
    own_pg_cluster: tuple[str, Path], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    admin_url, data_dir = own_pg_cluster
    _psql(admin_url, 'CREATE DATABASE "restart"')
    db_url = admin_url.rsplit("/", 1)[0] + "/restart"
    prepare_database(db_url)
    emails = seed(db_url, RESTART_LEADS, workdir=tmp_path / "seed")
    peer = smtp_peer_factory(Slow(0.05))  # about 3 s of sending: time for the restart to land mid-run
    env = sender_env(
        _base_env(db_url, tmp_path),
        tmp_path / "unused.lock",
        smtp_url=peer.url,
        max_senders=RESTART_SENDERS,
        lease_seconds=3,  # a claim orphaned by the outage settles within seconds
        retry_base_seconds=0.2,
    )
    logs = [tmp_path / f"sender{i}.log" for i in range(RESTART_SENDERS)]
    with senders() as procs:
        for i in range(RESTART_SENDERS):
            spawn(procs, env, tmp_path / f"sender{i}.lock", ["--until-idle", *TICK, "--batch", "1"], logs[i])
        wait_for(lambda: peer.count() >= RESTART_LEADS // 4, 60, "a quarter of the leads sent", logs[0])
        before, at_restart = _postmaster_pid(data_dir), peer.count()
        pg_ctl_log = tmp_path / "pg_ctl.log"
        assert _pg_ctl(data_dir, "restart", "-m", "fast", "-w", "-t", "60", out=pg_ctl_log) == 0, (
            pg_ctl_log.read_text()
        )
        assert _postmaster_pid(data_dir) != before
        codes = wait_all(procs, timeout=120)
    for i, code in enumerate(codes):
        assert code == 0, f"sender {i} exited {code}:\n{tail(logs[i])}"
    assert at_restart < RESTART_LEADS, "the restart landed after the run: nothing was tested"
    outages = sum(
        log.read_text().count("database unavailable") + log.read_text().count("retrying") for log in logs
    )
    assert outages >= 1, "no sender noticed the restart"

    per_recipient = peer.per_recipient()
    assert {r: n for r, n in per_recipient.items() if n > 1} == {}  # no duplicate
    assert set(per_recipient) <= set(emails)
    # Every lead terminal: sent, or unknown where the restart cut a transmission's bookkeeping short.
    by_status = counts(db_url)
    assert set(by_status) <= {"sent", "unknown"}, by_status
    # At most one ambiguity per sender the restart disconnected (DESIGN.md: unknown <= disconnects).
    assert by_status.get("unknown", 0) <= RESTART_SENDERS, by_status
    assert peer.count() > at_restart  # the senders reconnected and went on sending
    rows = enrollments(db_url)
    assert {e for e, (s, _, _) in rows.items() if s == "sent"} <= set(per_recipient)
    print(
        f"\n[pg-restart] at restart {at_restart}/{RESTART_LEADS} sent; end {by_status}; "
        f"outage log lines {outages}"
    )


# --- 8. SQLite, six writer processes -------------------------------------------------------------------

WRITERS = 6
WRITER_LEADS = 120
# What a lock error would look like in a log: the message itself, or the service's catch-all for a
# tick cut short by an OperationalError, or the record step's retry.
LOCK_SYMPTOMS = ("database is locked", "database unavailable", "retrying", "traceback")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sqlite_six_writers_never_see_database_is_locked(
    sqlite_url: str, smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    prepare_database(sqlite_url)
    emails = seed(sqlite_url, WRITER_LEADS, workdir=tmp_path / "seed", start=False)
    env = sender_env(
        _base_env(sqlite_url, tmp_path), tmp_path / "unused.lock", smtp_url=smtp_peer.url, max_senders=WRITERS
    )
    logs = [tmp_path / f"sender{i}.log" for i in range(WRITERS)]  # stdout and stderr of each
    with senders() as procs:
        for i in range(WRITERS):
            spawn(procs, env, tmp_path / f"sender{i}.lock", TICK, logs[i])
        # All six up and holding a DB-lock slot before there is work: they race from the first claim.
        active = "SELECT count(*) FROM sender_instance WHERE slot IS NOT NULL AND stopped_at IS NULL"
        wait_for(lambda: sql_rows(sqlite_url, active) == [(WRITERS,)], 60, "six active senders", logs[0])
        engine = make_engine(sqlite_url)
        try:
            campaigns.start(engine, CAMPAIGN, actor="test", reason=None, now=DatabaseClock(engine).now())
        finally:
            engine.dispose()
        wait_for(lambda: counts(sqlite_url) == {"sent": WRITER_LEADS}, 120, "every lead sent", logs[0])
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # all at once: they shut down in parallel
        codes = [wait_exit(proc, 60, log) for proc, log in zip(procs, logs, strict=True)]
    assert codes == [0] * WRITERS, [tail(log) for log in logs]
    for log in logs:
        text = log.read_text().lower()
        assert not [s for s in LOCK_SYMPTOMS if s in text], tail(log)

    assert smtp_peer.per_recipient() == dict.fromkeys(emails, 1)
    per_instance = dict(
        sql_rows(sqlite_url, "SELECT instance_id, count(*) FROM send_log GROUP BY instance_id")
    )
    assert len(per_instance) >= 3, f"the work was not shared: nothing raced ({per_instance})"


# --- 9. one address, two spellings ---------------------------------------------------------------------


def test_same_address_in_other_case_and_spacing_is_one_lead(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    seed(db_url, 1, workdir=tmp_path / "seed")  # the campaign, plus an ordinary lead
    address = "dup.lead@example.com"
    engine = make_engine(db_url)
    try:
        now = DatabaseClock(engine).now()
        first = import_leads(
            engine, CAMPAIGN, b"email,first_name\nDup.Lead@Example.COM,Dee\n", source="a.csv", now=now
        )
        second = import_leads(
            engine,
            CAMPAIGN,
            b'email,first_name\n"  dup.lead@EXAMPLE.com ",Dee\nDUP.LEAD@example.com,Dee\n',
            source="b.csv",
            now=now,
        )
    finally:
        engine.dispose()
    assert first.enrolled == 1
    assert (second.enrolled, second.already_enrolled, second.duplicates_in_file) == (0, 1, 1), second
    assert sql_rows(db_url, "SELECT email FROM lead WHERE lower(email) LIKE 'dup%'") == [(address,)]

    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=smtp_peer.url)
    log = tmp_path / "run.log"
    proc = start_sender(env, tmp_path / "sender.lock", ["--until-idle", *TICK], log_file=log)
    assert wait_exit(proc, 60, log) == 0, tail(log)

    assert smtp_peer.per_recipient() == {lead_email(0): 1, address: 1}
    assert enrollments(db_url)[address][0] == "sent"
    assert [(s, c) for s, c, _ in send_log(db_url, address)] == [("sent", 250)]
