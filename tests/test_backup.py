"""`sendguard db backup FILE`: refused on PostgreSQL and on bad paths (exit 2, one line); taken while a
real sender sends, the copy opens with `status`, passes integrity_check and is one commit's state."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from sender.migrate import upgrade
from tests.conftest import run_cli
from tests.integration._sendguard import TICK, Slow, counts, seed, senders, spawn, wait_exit, wait_for
from tests.integration.helpers import CAMPAIGN, sender_env, tail
from tests.smtp_peer import SmtpPeer


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SENDGUARD_DATABASE_URL": url, "SENDGUARD_LOCK_FILE": str(tmp_path / "s.lock")}


def test_postgresql_is_refused_with_a_pointer_to_pg_dump(tmp_path: Path) -> None:
    # Port 1: nothing listens there, so this also proves the refusal comes before any connection.
    env = _env("postgresql+psycopg://sendguard:secret@127.0.0.1:1/sendguard", tmp_path)
    result = run_cli(["db", "backup", str(tmp_path / "copy.db")], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pg_dump" in lines[0] and "secret" not in lines[0]
    assert not (tmp_path / "copy.db").exists()


@pytest.mark.slow  # five process starts
def test_bad_paths_are_bad_input(sqlite_url: str, tmp_path: Path) -> None:
    missing = run_cli(["db", "backup", str(tmp_path / "copy.db")], _env(sqlite_url, tmp_path))
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    assert "no SQLite database at" in missing.stderr

    upgrade(sqlite_url)
    env = _env(sqlite_url, tmp_path)
    existing = tmp_path / "copy.db"
    existing.write_text("precious")
    refused = run_cli(["db", "backup", str(existing)], env)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert existing.read_text() == "precious"
    no_dir = run_cli(["db", "backup", str(tmp_path / "nope" / "copy.db")], env)
    assert no_dir.returncode == 2 and "does not exist" in no_dir.stderr
    itself = run_cli(["db", "backup", sqlite_url.removeprefix("sqlite:///"), "--force"], env)
    assert itself.returncode == 2 and "database itself" in itself.stderr

    forced = run_cli(["db", "backup", str(existing), "--force"], env)
    assert forced.returncode == 0, forced.stderr
    assert "integrity_check ok" in forced.stdout
    with sqlite3.connect(existing) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


LEADS = 60


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_backup_while_a_sender_sends(sqlite_url: str, smtp_peer_factory, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    emails = seed(sqlite_url, LEADS, workdir=tmp_path / "seed")
    slow = Slow(0.05)  # ~3 s of sending: the backup lands in the middle
    peer: SmtpPeer = smtp_peer_factory(slow)
    env = sender_env(_env(sqlite_url, tmp_path), tmp_path / "s.lock", smtp_url=peer.url)
    log_file = tmp_path / "sender.log"
    copy = tmp_path / "backup.db"
    with senders() as procs:
        proc = spawn(procs, env, tmp_path / "s.lock", [*TICK, "--until-idle", "--batch", "1"], log_file)
        wait_for(lambda: peer.count() >= 10, 60, "the sender to be sending", log_file)
        result = run_cli(["db", "backup", str(copy)], env)
        received_after_backup = peer.count()
        still_running = proc.poll() is None
        assert result.returncode == 0, result.stderr
        assert wait_exit(proc, 120, log_file) == 0, tail(log_file)
    assert still_running and received_after_backup < LEADS, "the backup did not overlap the sending"

    # One self-contained file, sound, at the current schema.
    assert not Path(f"{copy}-wal").exists()
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        sent_rows = conn.execute("SELECT count(*) FROM send_log WHERE status = 'sent'").fetchone()[0]
        # Every enrollment mid-flight in the copy holds exactly its live reservation: one commit's state.
        orphans = conn.execute(
            "SELECT count(*) FROM campaign_lead AS cl WHERE cl.status = 'sending' AND NOT EXISTS ("
            " SELECT 1 FROM send_log AS s WHERE s.enrollment_id = cl.id AND s.claim_token = cl.claim_token"
            " AND s.status IN ('reserved', 'transmitting'))"
        ).fetchone()[0]
        sent_in_copy = {
            row[0]
            for row in conn.execute(
                "SELECT l.email FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id WHERE cl.status = 'sent'"
            )
        }
    assert orphans == 0

    # Read back with the CLI, as an operator restoring it would.
    status = run_cli(["status", "--json", "--database-url", f"sqlite:///{copy}"], env)
    assert status.returncode == 0, status.stderr
    (campaign,) = [c for c in json.loads(status.stdout)["campaigns"] if c["name"] == CAMPAIGN]
    backed_up = campaign["counts"]
    assert sum(backed_up.values()) == LEADS
    assert 10 <= backed_up["sent"] < LEADS
    assert backed_up["sent"] == sent_rows == len(sent_in_copy)
    assert f"{LEADS} enrollments" in result.stdout
    # The copy is a past state of the live database: what it calls sent, the peer received.
    assert sent_in_copy <= set(peer.per_recipient())
    assert counts(sqlite_url) == {"sent": LEADS} and set(peer.per_recipient()) == set(emails)
