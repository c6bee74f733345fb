"""Pause is exact: once `sendguard campaign pause` returns, no transmission of that campaign starts.

A real long-running `sendguard run` sends a few hundred leads to a real SMTP server; the pause comes
from another process, as an operator's would. The one message the sender may already have had on the
wire when the pause committed is allowed through; nothing after it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration._sendguard import (
    TICK,
    Slow,
    cli_json,
    counts,
    ok,
    seed,
    senders,
    spawn,
    terminate,
    wait_for,
)
from tests.integration.helpers import CAMPAIGN, poll_until, sender_env, sql_rows
from tests.smtp_peer import SmtpPeer

LEADS = 300
# The peer takes this long to accept each message (an ordinary server's queue write and filters), so
# the sender is still mid-campaign when the pause lands, and messages arrive one by one.
PEER_DELAY = 0.01
OBSERVE_SECONDS = 2.0


@pytest.mark.slow
def test_pause_stops_transmissions_at_once_and_resume_finishes_the_campaign(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    slow = Slow(PEER_DELAY)
    peer = smtp_peer_factory(slow)
    emails = seed(db_url, LEADS, workdir=tmp_path / "seed")
    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=peer.url, retry_base_seconds=0.2)
    log = tmp_path / "sender.log"

    with senders() as procs:
        sender = spawn(procs, env, tmp_path / "sender.lock", TICK, log)
        wait_for(lambda: peer.count(CAMPAIGN) >= 10, 60, "the first messages", log)

        ok(run_cli(["campaign", "pause", CAMPAIGN, "--reason", "test"], env), "campaign pause")
        at_pause = peer.count(CAMPAIGN)
        assert at_pause < LEADS, "the campaign finished before the pause landed: nothing was tested"

        # Observation window (not synchronization): does anything beyond the one in flight arrive?
        poll_until(lambda: peer.count(CAMPAIGN) > at_pause + 1, OBSERVE_SECONDS)
        after = peer.count(CAMPAIGN)
        assert after - at_pause <= 1, f"{after - at_pause} messages arrived after the pause returned"
        assert sender.poll() is None, "a pause must not stop the sender"

        # The sender handed its unsent claims back: nothing half-claimed, nothing reserved.
        wait_for(lambda: counts(db_url).get("sending", 0) == 0, 10, "claims released", log)
        live = sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status IN ('reserved', 'transmitting')")
        assert live == [(0,)]
        # What the database calls sent is exactly what reached the wire.
        assert counts(db_url) == {"sent": after, "queued": LEADS - after}

        status = cli_json(["status"], env)
        assert isinstance(status, dict)
        campaign = next(c for c in status["campaigns"] if c["name"] == CAMPAIGN)
        assert campaign["status"] == "paused"
        assert campaign["counts"]["sent"] == after and campaign["counts"]["sending"] == 0

        events = sql_rows(db_url, "SELECT kind, actor, reason FROM campaign_event WHERE kind = 'paused'")
        assert len(events) == 1, events
        _, actor, reason = events[0]
        assert actor.startswith("cli:") and reason == "test", events
        paused_by = sql_rows(
            db_url, "SELECT paused_by, pause_reason FROM campaign WHERE name = :n", {"n": CAMPAIGN}
        )
        assert paused_by == [(actor, "test")]

        slow.delay = 0  # the rest may go at full speed
        ok(run_cli(["campaign", "resume", CAMPAIGN], env), "campaign resume")
        wait_for(lambda: counts(db_url) == {"sent": LEADS}, 120, "the rest of the campaign", log)
        assert peer.wait_for(LEADS, timeout=10)
        per_recipient = peer.per_recipient()
        assert set(per_recipient) == set(emails)
        assert {rcpt: n for rcpt, n in per_recipient.items() if n != 1} == {}

        assert terminate(sender, 30, log) == 0

    kinds = [k for (k,) in sql_rows(db_url, "SELECT kind FROM campaign_event ORDER BY id")]
    assert kinds[-2:] == ["paused", "resumed"], kinds
