"""Senders die by SIGKILL at arbitrary points while others run: still at most one message per lead,
nothing lost, and every ambiguity is an `unknown` that a crash explains.

Plus the control cases: a broken claim (an enrollment queued again although its send was delivered)
is stopped by the reservation guard, and with the guard removed the same break is a duplicate that
these tests' peer-side checks see. Without the second half, the crash and concurrency tests could be
passing only because they cannot fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sender import claim as q
from sender.clock import DatabaseClock
from sender.config import Settings
from sender.db import make_engine
from sender.sending import Identity, PassStats, claim_batch, deliver
from sender.service import SenderService
from sender.transport import SmtpTransport
from tests.conftest import run_cli
from tests.integration.helpers import (
    CAMPAIGN,
    leads_by_status,
    seed_campaign,
    sender_env,
    sql_rows,
    start_sender,
    status_counts,
    tail,
    wait_all,
)
from tests.smtp_peer import SmtpPeer

# --- SIGKILL while sending ------------------------------------------------------------------------

SENDERS = 6
LEADS = 1000
KILL_EVERY = 1.0
MAX_KILLS = 12
MIN_KILLS = 3  # fewer and the test would not have tested crashes
LEASE_SECONDS = 2


def _working_sender(db_url: str, procs: list[subprocess.Popen[bytes]]) -> int | None:
    """Index of the longest-registered live sender that has reserved at least one send, if any."""
    rows = sql_rows(
        db_url,
        "SELECT si.pid FROM sender_instance AS si WHERE si.stopped_at IS NULL "
        "AND EXISTS (SELECT 1 FROM send_log AS s WHERE s.instance_id = si.id) ORDER BY si.started_at",
    )
    alive = {p.pid: i for i, p in enumerate(procs) if p.poll() is None}
    return next((alive[pid] for (pid,) in rows if pid in alive), None)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_a_sender_every_second(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    # A peer that offers PIPELINING, as `sendguard sink` and real servers do: the sender then commits
    # each gate while the previous reply is on its way, the path with the most in flight at a kill.
    # (scripts/chaos.py kills senders talking to peers without it.)
    smtp_peer = smtp_peer_factory(pipelining=True)
    # Every kill mid-transmission may leave an `unknown`: the unknowns breaker would pause the campaign
    # (tested in test_breakers.py); here the campaign must run to its end through the crashes.
    emails = seed_campaign(
        sendguard_env, LEADS, workdir=tmp_path / "seed", toml_extra="[breakers]\nunknowns = 0\n"
    )
    # Room for the live senders plus the DB-lock slots that killed senders hold until their lease ends.
    env = sender_env(
        sendguard_env,
        tmp_path / "unused.lock",
        smtp_url=smtp_peer.url,
        max_senders=SENDERS * 2,
        lease_seconds=LEASE_SECONDS,
    )
    args = ["--until-idle", "--interval", "0.2"]
    locks = [tmp_path / f"sender{i}.lock" for i in range(SENDERS)]
    logs = [tmp_path / f"sender{i}.log" for i in range(SENDERS)]
    procs = [start_sender(env, locks[i], args, log_file=logs[i]) for i in range(SENDERS)]

    kills = 0
    received_at_kill: list[int] = []  # messages the peer had when each kill landed
    try:
        # Once a second, SIGKILL the longest-running sender that is past start-up (registered and
        # sending: killing a process still importing Python would test nothing) and restart it at
        # once under the same lock file.
        deadline = time.monotonic() + 120
        next_kill = time.monotonic() + KILL_EVERY
        while kills < MAX_KILLS and time.monotonic() < deadline:
            if time.monotonic() < next_kill:
                time.sleep(0.02)  # kill cadence, not synchronization
                continue
            if smtp_peer.count() >= LEADS or all(p.poll() is not None for p in procs):
                break  # nothing left to interrupt
            target = _working_sender(db_url, procs)
            if target is None:
                time.sleep(0.05)  # poll until a restarted sender is up and sending
                continue
            victim = procs[target]
            victim.send_signal(signal.SIGKILL)
            received_at_kill.append(smtp_peer.count())
            assert victim.wait(timeout=10) == -signal.SIGKILL
            kills += 1
            procs[target] = start_sender(env, locks[target], args, log_file=logs[target])
            next_kill = time.monotonic() + KILL_EVERY
        codes = wait_all(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for i, code in enumerate(codes):
        assert code == 0, f"sender {i} exited {code}:\n{tail(logs[i])}"

    # A last sender after the storm: reaps whatever the dead left and finishes the queue.
    final = run_cli(
        ["run", "--until-idle", "--interval", "0.2"], sender_env(env, tmp_path / "final.lock"), timeout=120
    )
    assert final.returncode == 0, final.stderr[-3000:]

    mid_run = sum(1 for n in received_at_kill if n < LEADS)
    assert mid_run >= MIN_KILLS, f"only {mid_run} kills landed mid-run ({received_at_kill}): nothing tested"

    per_recipient = smtp_peer.per_recipient()
    duplicates = {rcpt: n for rcpt, n in per_recipient.items() if n > 1}
    counts = status_counts(sendguard_env)
    states = leads_by_status(sendguard_env)
    unknown = counts["unknown"]
    received_not_sent = sorted(r for r in per_recipient if states.get(r) != "sent")
    # Claims the dead left behind, settled by the reaper once their lease ran out.
    ((reaped,),) = sql_rows(
        db_url, "SELECT count(*) FROM send_log WHERE smtp_reply = 'lease expired before transmission'"
    )
    print(
        f"\n[crash/{db_url.split(':', 1)[0].split('+', 1)[0]}] kills={kills} unknown={unknown} "
        f"duplicates={len(duplicates)} received={sum(per_recipient.values())} sent={counts['sent']} "
        f"received-but-unknown={len(received_not_sent)} reaped-unsent-claims={reaped} "
        f"connections={smtp_peer.connections()}"
    )

    # At most one message per recipient, and only to our leads.
    assert duplicates == {}
    assert set(per_recipient) <= set(emails)
    # Nothing left in flight; every lead ended sent, or unknown because a crash made it ambiguous.
    assert counts["queued"] == 0 and counts["sending"] == 0, counts
    assert counts["sent"] + counts["unknown"] == LEADS, counts
    assert set(states) == set(emails)
    assert set(states.values()) <= {"sent", "unknown"}
    # A kill can leave two sends `transmitting`: the one whose reply was on its way, and either the one
    # before (answered, its record waiting for the next hand-over) or the next (gated, its payload not
    # yet out: reaped `unknown` too, the reaper cannot tell). Only the last was never received.
    unknown_unreceived = sum(1 for e, s in states.items() if s == "unknown" and e not in per_recipient)
    assert unknown_unreceived <= kills, f"{unknown_unreceived} unknown and never received, {kills} crashes"
    assert unknown <= 2 * kills, f"{unknown} unknown sends but only {kills} crashes"
    assert reaped + unknown >= 1, "no kill left a claim behind: the reaper was never tested"
    # The records agree with the wire: what the peer got is sent or unknown (never queued, failed,
    # skipped), and everything recorded sent did reach the peer.
    assert all(states[r] in ("sent", "unknown") for r in per_recipient)
    assert {e for e, s in states.items() if s == "sent"} <= set(per_recipient)
    # The send log agrees too: one delivered-or-possibly-delivered row per lead, none stuck in flight.
    live = sql_rows(
        db_url,
        "SELECT status, count(*), count(DISTINCT lead_id) FROM send_log "
        "WHERE status IN ('reserved', 'transmitting', 'sent', 'unknown') GROUP BY status",
    )
    by_status = {s: (n, distinct) for s, n, distinct in live}
    assert set(by_status) <= {"sent", "unknown"}, by_status
    assert by_status.get("sent", (0, 0)) == (counts["sent"], counts["sent"])
    assert by_status.get("unknown", (0, 0)) == (unknown, unknown)


# --- control: a broken claim against the reservation guard ---------------------------------------

CONTROL_LEADS = 3


def _send_round(engine: Engine, peer: SmtpPeer, settings: Settings, ident: Identity) -> tuple[int, PassStats]:
    """One in-process claim+reserve, then gate+transmit+record for each reservation (sender/sending.py)."""
    transport = SmtpTransport(peer.url, timeout=10)
    clock = DatabaseClock(engine)
    service = SenderService(settings, engine, transport, clock=clock)
    (plan,) = service.plans()
    batch = claim_batch(engine, plan, ident, settings, clock, limit=CONTROL_LEADS * 2)
    stats = PassStats()
    try:
        for r in batch.reservations:
            stats.add(deliver(engine, transport, plan, r, settings, clock))
    finally:
        transport.close()
    return batch.handled, stats


def _break_claims(engine: Engine) -> None:
    """What a broken claim or reaper would leave: delivered enrollments queued again, send_log still `sent`."""
    with engine.begin() as conn:
        n = conn.execute(
            text(
                "UPDATE campaign_lead SET status = 'queued', reason = NULL, claim_token = NULL, claimed_by = NULL, "
                "lease_expires_at = NULL WHERE status = 'sent'"
            )
        ).rowcount
    assert n == CONTROL_LEADS


@pytest.fixture
def control_setup(db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path):
    emails = seed_campaign(sendguard_env, CONTROL_LEADS, workdir=tmp_path / "seed")
    settings = Settings(database_url=db_url, smtp_url=smtp_peer.url, lease_seconds=60)
    engine = make_engine(db_url)
    try:
        handled, stats = _send_round(
            engine, smtp_peer, settings, Identity("control-first", socket.gethostname(), os.getpid())
        )
        assert (handled, stats.sent) == (0, CONTROL_LEADS)
        assert smtp_peer.per_recipient() == dict.fromkeys(emails, 1)
        _break_claims(engine)
        yield engine, settings, emails
    finally:
        engine.dispose()


@pytest.mark.slow  # seeding through the CLI takes a few seconds
def test_control_guard_stops_resend_after_broken_claim(
    control_setup, db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer
) -> None:
    engine, settings, emails = control_setup
    clock = DatabaseClock(engine)
    ident = Identity("control-second", socket.gethostname(), os.getpid())

    # The guard itself: the claim goes through (the break made it possible), the reservation does not.
    with engine.connect() as conn:
        tx = conn.begin()
        now = clock.now()
        (campaign_id,) = conn.execute(text("SELECT id FROM campaign WHERE name = :n"), {"n": CAMPAIGN}).one()
        claimed = q.claim(
            conn, campaign_id=campaign_id, limit=10, token_prefix="probe.", instance=ident.instance_id, now=now,
            lease_until=now + timedelta(seconds=60),
        )  # fmt: skip
        assert len(claimed) == CONTROL_LEADS
        guarded = [
            q.reserve(conn, c, message_id=f"<probe-{c.lead_id}@example.com>", instance=ident.instance_id,
                      host=ident.host, pid=ident.pid, now=now)
            for c in claimed
        ]  # fmt: skip
        assert guarded == [None] * CONTROL_LEADS  # reserve() says: a live send exists, never send
        tx.rollback()

    # The whole pass: every claim ends skipped(duplicate_prevented), nothing reaches the wire.
    handled, stats = _send_round(engine, smtp_peer, settings, ident)
    assert handled == CONTROL_LEADS
    assert stats.total == 0  # nothing gated, transmitted or recorded
    assert smtp_peer.per_recipient() == dict.fromkeys(emails, 1)

    counts = status_counts(sendguard_env)
    assert counts["skipped"] == CONTROL_LEADS and counts["queued"] == counts["sending"] == 0, counts
    rows = sql_rows(
        db_url,
        "SELECT l.email, cl.reason FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id",
    )
    assert sorted(rows) == [(e, "duplicate_prevented") for e in sorted(emails)]
    events = sql_rows(db_url, "SELECT count(*) FROM campaign_event WHERE kind = 'duplicate_prevented'")
    assert events == [(CONTROL_LEADS,)]
    # Still exactly one live send_log row per lead.
    assert sql_rows(
        db_url, "SELECT count(*), count(DISTINCT lead_id) FROM send_log WHERE status = 'sent'"
    ) == [(CONTROL_LEADS, CONTROL_LEADS)]


@pytest.mark.slow  # seeding through the CLI takes a few seconds
def test_control_without_guard_the_break_is_a_visible_duplicate(
    control_setup, db_url: str, smtp_peer: SmtpPeer
) -> None:
    """Remove the partial unique index and the same break sends again: the peer-side check catches it."""
    engine, settings, emails = control_setup
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX uq_send_log_live"))
    handled, stats = _send_round(
        engine, smtp_peer, settings, Identity("control-broken", socket.gethostname(), os.getpid())
    )
    assert handled == 0 and stats.sent == CONTROL_LEADS
    per_recipient = smtp_peer.per_recipient()
    duplicates = {rcpt: n for rcpt, n in per_recipient.items() if n > 1}
    assert duplicates == dict.fromkeys(emails, 2)
    assert sql_rows(
        db_url, "SELECT count(*), count(DISTINCT lead_id) FROM send_log WHERE status = 'sent'"
    ) == [(CONTROL_LEADS * 2, CONTROL_LEADS)]
