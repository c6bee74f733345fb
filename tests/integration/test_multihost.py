"""Four sender "hosts" on one PostgreSQL database (README, Operations: several hosts): each its own lock
file and instance, SENDGUARD_MAX_SENDERS=4. One host is lost mid-run (SIGKILL while it holds claims)
and never comes back: the other three reap its claims once their lease ends, finish the queue, and the
SMTP peer sees every lead at most once; every lead ends terminal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sender.migrate import upgrade
from tests.integration._sendguard import TICK, Slow, seed, senders, spawn, wait_for
from tests.integration.helpers import sql_rows, status_counts, tail, wait_all
from tests.smtp_peer import SmtpPeer

HOSTS = 4
LEADS = 200
LEASE_SECONDS = 2


def _claims_of(pg_url: str, pid: int) -> list[int]:
    """Enrollments a sender process holds right now (claimed, not yet recorded)."""
    rows = sql_rows(
        pg_url,
        "SELECT cl.id FROM campaign_lead AS cl JOIN sender_instance AS si ON si.id = cl.claimed_by"
        " WHERE si.pid = :pid AND cl.status = 'sending' ORDER BY cl.id",
        {"pid": pid},
    )
    return [r[0] for r in rows]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_four_hosts_one_lost_for_good(pg_url: str, smtp_peer_factory, tmp_path: Path) -> None:
    upgrade(pg_url)
    emails = seed(pg_url, LEADS, workdir=tmp_path / "seed")
    # A peer that takes 20 ms per message (serialised in its one thread): a run of seconds, so the
    # loss lands mid-run while the victim holds a batch of claims.
    slow = Slow(0.02)
    peer: SmtpPeer = smtp_peer_factory(slow)
    env = {
        **os.environ,
        "SENDGUARD_DATABASE_URL": pg_url,
        "SENDGUARD_SMTP_URL": peer.url,
        "SENDGUARD_MAX_SENDERS": str(HOSTS),
        "SENDGUARD_LEASE_SECONDS": str(LEASE_SECONDS),
        "PYTHONUNBUFFERED": "1",
    }
    locks = [tmp_path / f"host{i}" / "sendguard-sender.lock" for i in range(HOSTS)]
    logs = [tmp_path / f"host{i}.log" for i in range(HOSTS)]
    for lock in locks:
        lock.parent.mkdir()
    with senders() as procs:
        for i in range(HOSTS):
            spawn(procs, env, locks[i], [*TICK, "--until-idle"], logs[i])

        def active() -> int:
            ((n,),) = sql_rows(pg_url, "SELECT count(*) FROM sender_instance WHERE slot IS NOT NULL")
            return n

        wait_for(lambda: active() == HOSTS, 60, "four active senders", logs[0])
        victim = procs[0]
        wait_for(lambda: len(_claims_of(pg_url, victim.pid)) > 0 and peer.count() >= 10, 60,
                 "the victim to hold claims mid-run", logs[0])  # fmt: skip
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        orphans = _claims_of(pg_url, victim.pid)  # nobody can settle them before their lease ends
        received_at_loss = peer.count()
        codes = wait_all(procs[1:], timeout=180)

    for i, code in enumerate(codes, start=1):
        assert code == 0, f"host {i} exited {code}:\n{tail(logs[i])}"
    assert orphans, "the victim held no claims when it died: the loss tested nothing"
    assert received_at_loss < LEADS

    # Every lead terminal; nothing left sending or queued, nothing lost to a failure.
    counts = status_counts(env)
    assert counts["queued"] == counts["sending"] == counts["failed"] == counts["skipped"] == 0, counts
    assert counts["sent"] + counts["unknown"] == LEADS

    # At the SMTP peer: nobody got two copies, every sent lead got its one.
    per_recipient = peer.per_recipient()
    assert {r: n for r, n in per_recipient.items() if n > 1} == {}
    sent = {
        e
        for (e,) in sql_rows(
            pg_url,
            "SELECT l.email FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id WHERE cl.status = 'sent'",
        )
    }
    assert sent <= set(per_recipient) <= set(emails)

    # The lost host's claims: the reaper settled each; unsent ones went out from another host, the one
    # caught transmitting (if any) is `unknown` for review, never resent.
    settled = sql_rows(
        pg_url,
        "SELECT cl.id, cl.status, cl.reason, (SELECT si.pid FROM send_log AS s JOIN sender_instance AS si"
        " ON si.id = s.instance_id WHERE s.enrollment_id = cl.id AND s.status = 'sent') AS sent_by"
        " FROM campaign_lead AS cl ORDER BY cl.id",
    )
    settled = [row for row in settled if row[0] in set(orphans)]
    assert len(settled) == len(orphans)
    for enrollment, status, reason, sent_by in settled:
        if status == "sent":
            assert sent_by is not None and sent_by != victim.pid, (enrollment, sent_by)
        else:
            assert (status, reason) == ("unknown", "lease_expired_during_transmission"), (enrollment, status)
    ((reaped_unsent,),) = sql_rows(
        pg_url,
        "SELECT count(*) FROM send_log AS s JOIN sender_instance AS si ON si.id = s.instance_id"
        " WHERE si.pid = :pid AND s.smtp_reply = 'lease expired before transmission'",
        {"pid": victim.pid},
    )
    assert reaped_unsent >= 1 or any(status == "unknown" for _, status, _, _ in settled)

    # Four hosts: four instances, one per lock file; the three survivors stopped cleanly, the lost
    # one never did (its heartbeat simply stopped).
    instances = sql_rows(pg_url, "SELECT pid, lock_file, stopped_at FROM sender_instance")
    assert sorted(lock for _, lock, _ in instances) == sorted(str(p) for p in locks)
    assert [pid for pid, _, stopped in instances if stopped is None] == [victim.pid]
    senders_that_sent = sql_rows(
        pg_url, "SELECT count(DISTINCT instance_id) FROM send_log WHERE status = 'sent'"
    )[0][0]
    assert senders_that_sent >= 3, f"only {senders_that_sent} hosts sent: the load was not shared"
    print(
        f"\n[multihost] received_at_loss={received_at_loss} orphans={len(orphans)} "
        f"settled={[s for _, s, _, _ in settled]} sent={counts['sent']} unknown={counts['unknown']}"
    )
