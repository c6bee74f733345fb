"""The locks around the sender, with real processes: the file lock (one sender per lock file), the DB
lock (SENDGUARD_MAX_SENDERS active senders per database, the rest on standby) and a clean SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sender.locks import SenderFileLock
from tests.conftest import run_cli
from tests.integration._sendguard import (
    TICK,
    Slow,
    cli_json,
    counts,
    enrollments,
    instance_of,
    seed,
    senders,
    spawn,
    terminate,
    wait_exit,
    wait_for,
)
from tests.integration.helpers import sender_env, sql_rows
from tests.smtp_peer import SmtpPeer

LEASE = 2.0


def test_second_sender_on_the_same_lock_file_exits_3_naming_the_holder(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    lock = tmp_path / "sender.lock"
    env = sender_env(sendguard_env, lock, smtp_url=smtp_peer.url)
    log = tmp_path / "first.log"
    with senders() as procs:
        first = spawn(procs, env, lock, TICK, log)
        # It registers only after taking the file lock.
        wait_for(lambda: instance_of(db_url, first.pid) != (), 30, "the first sender to register", log)

        started = time.monotonic()
        second = run_cli(["run", "--until-idle", *TICK], env, timeout=30)
        elapsed = time.monotonic() - started

        assert second.returncode == 3, second.stderr
        assert elapsed < 5, f"the second sender took {elapsed:.1f}s to give up"
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr  # one line, no traceback
        assert first.poll() is None, "the holder must keep running"
        # Refused before it touched the database: still one registered sender.
        assert sql_rows(db_url, "SELECT pid FROM sender_instance") == [(first.pid,)]
        assert terminate(first, 30, log) == 0


@pytest.mark.slow
def test_standby_sender_takes_over_within_one_lease_of_a_sigkill(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    leads = 250
    armed = threading.Event()
    killed = threading.Event()
    victim: dict[str, object] = {}

    def kill_a_mid_message(rcpt: str, phase: str, nth: int) -> str | None:
        # Once armed, SIGKILL sender A at the worst moment: its payload is here and the peer is about to
        # accept it, but A will never read the reply. Until then the peer takes 50 ms per message (a
        # remote server would take longer), so A is still busy while the test looks at B.
        if phase != "data_end" or killed.is_set():
            return None
        if armed.is_set():
            os.kill(victim["pid"], signal.SIGKILL)  # type: ignore[arg-type]
            victim["rcpt"], victim["at"] = rcpt, time.time()
            killed.set()
            return None  # accept (and store) the message: it did reach the recipient
        time.sleep(0.05)
        return None

    peer = smtp_peer_factory(kill_a_mid_message)
    emails = seed(db_url, leads, workdir=tmp_path / "seed")
    env = sender_env(
        sendguard_env, tmp_path / "unused.lock", smtp_url=peer.url, max_senders=1, lease_seconds=LEASE
    )
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"

    with senders() as procs:
        a = spawn(procs, env, tmp_path / "a.lock", TICK, log_a)
        victim["pid"] = a.pid
        wait_for(lambda: peer.count() >= 1, 30, "sender A to send", log_a)
        b = spawn(procs, env, tmp_path / "b.lock", ["--until-idle", *TICK], log_b)

        # B registered and has heartbeated at least once since: it asked for a slot and got none.
        def b_on_standby() -> bool:
            row = instance_of(db_url, b.pid)
            return bool(row) and row[2] > row[4] and row[1] is None

        wait_for(b_on_standby, 30, "sender B to stand by", log_b)
        status = cli_json(["status"], env)
        assert isinstance(status, dict)
        by_pid = {s["pid"]: s for s in status["senders"]}
        assert by_pid[a.pid]["alive"] and by_pid[b.pid]["alive"], status["senders"]
        assert (by_pid[a.pid]["slot"], by_pid[b.pid]["slot"]) == (0, None), status["senders"]
        assert [s["pid"] for s in status["senders"] if s["slot"] is not None] == [a.pid]
        a_id = instance_of(db_url, a.pid)[0]
        assert sql_rows(db_url, "SELECT DISTINCT instance_id FROM send_log") == [(a_id,)]

        armed.set()
        assert killed.wait(30), "sender A finished before it could be killed: raise `leads`"
        assert a.wait(timeout=10) == -signal.SIGKILL
        assert wait_exit(b, 120, log_b) == 0

    # B's first message left within one lease of A's death: A's slot lease (<= LEASE after its last
    # heartbeat) expired, plus one tick (0.2 s) and B's first claim-and-send; the rest is slack for a
    # loaded machine.
    b_first = min(r.at for r in peer.received() if r.at > victim["at"] and r.recipient != victim["rcpt"])  # type: ignore[operator]
    takeover = b_first - victim["at"]  # type: ignore[operator]
    assert takeover <= LEASE + 1.0, f"B took {takeover:.2f}s to take over"

    # Every lead exactly one message: the one A was killed on reached the peer once and is `unknown`
    # (never retried); B sent all the rest.
    per_recipient = peer.per_recipient()
    assert set(per_recipient) == set(emails)
    assert {rcpt: n for rcpt, n in per_recipient.items() if n != 1} == {}
    rows = enrollments(db_url)
    assert rows.pop(victim["rcpt"])[:2] == ("unknown", "lease_expired_during_transmission")  # type: ignore[call-overload]
    assert {status for status, _, _ in rows.values()} == {"sent"}

    b_id = instance_of(db_url, b.pid)[0]
    by_instance = dict(
        sql_rows(
            db_url, "SELECT instance_id, count(*) FROM send_log WHERE status = 'sent' GROUP BY instance_id"
        )
    )
    assert set(by_instance) == {a_id, b_id} and by_instance[b_id] > 0, by_instance
    assert sum(by_instance.values()) == leads - 1


@pytest.mark.slow
def test_sigterm_releases_claims_slot_and_lock(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    leads = 100
    slow = Slow(0.02)
    peer = smtp_peer_factory(slow)
    emails = seed(db_url, leads, workdir=tmp_path / "seed")
    lock = tmp_path / "sender.lock"
    env = sender_env(sendguard_env, lock, smtp_url=peer.url)
    log = tmp_path / "sender.log"

    with senders() as procs:
        # Large batches: when the signal lands the sender holds many reserved claims it must give back.
        sender = spawn(procs, env, lock, [*TICK, "--batch", "50"], log)
        wait_for(lambda: peer.count() >= 5, 30, "the first messages", log)
        reserved = sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status = 'reserved'")[0][0]
        assert reserved > 0, "no claims in hand: nothing to release"

        started = time.monotonic()
        sender.send_signal(signal.SIGTERM)
        assert wait_exit(sender, 30, log) == 0
        # Seconds, not a lease (300 s): the in-flight message finishes and every claim is given back
        # at once. 5 s held on a quiet box; 6.1 s was seen under the whole suite at load 15 on 2 CPUs.
        assert time.monotonic() - started < 15, "SIGTERM took too long"

    delivered = peer.count()
    assert delivered < leads
    slow.delay = 0
    # The message in flight was finished and recorded; every other claim went back to the queue.
    assert counts(db_url) == {"sent": delivered, "queued": leads - delivered}
    assert sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status NOT IN ('sent')") == [(0,)]
    assert "released" in log.read_text()

    instance_id, slot, _, stopped_at, _ = instance_of(db_url, sender.pid)
    assert stopped_at is not None and slot is None
    assert sql_rows(db_url, "SELECT slot FROM sender_slot WHERE instance_id IS NOT NULL") == []

    # The file lock is free again (and the pid note beside it is gone).
    assert not Path(f"{lock}.pid").exists()
    probe = SenderFileLock(str(lock))
    probe.acquire()
    probe.release()

    # A new sender on the same lock file finishes the campaign: nothing lost, nothing twice, and the
    # released claims did not use up an attempt.
    rerun = run_cli(["run", "--until-idle", *TICK], env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert peer.per_recipient() == dict.fromkeys(emails, 1)
    assert {attempts for _, _, attempts in enrollments(db_url).values()} == {1}
    by_instance = dict(sql_rows(db_url, "SELECT instance_id, count(*) FROM send_log GROUP BY instance_id"))
    assert by_instance.pop(instance_id) == delivered
    assert list(by_instance.values()) == [leads - delivered]
