"""What a real SMTP server's replies do to an enrollment: a real `sendguard run` against SmtpPeer with
faults injected per recipient and phase, checked at the peer (what reached the wire) and in the database.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration._sendguard import TICK, cli_json, enrollments, leads, ok, seed, send_log, wait_exit
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, sql_rows, start_sender
from tests.smtp_peer import SmtpPeer

MAX_ATTEMPTS = 3
RETRY_BASE = 0.2


def _env(sendguard_env: dict[str, str], peer: SmtpPeer, tmp_path: Path) -> dict[str, str]:
    return sender_env(
        sendguard_env,
        tmp_path / "sender.lock",
        smtp_url=peer.url,
        retry_base_seconds=RETRY_BASE,
        max_attempts=MAX_ATTEMPTS,
    )


def _run_until_idle(env: dict[str, str], tmp_path: Path, name: str) -> None:
    log = tmp_path / f"{name}.log"
    proc = start_sender(env, Path(env["SENDGUARD_LOCK_FILE"]), ["--until-idle", *TICK], log_file=log)
    assert wait_exit(proc, 60, log) == 0, log.read_text()


def test_smtp_replies_decide_each_outcome(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    flaky, full, gone, refused, fine = (lead_email(i) for i in range(5))
    calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        calls[(rcpt, phase)] += 1
        if rcpt == flaky and phase == "rcpt" and nth == 1:
            return "452"  # mailbox full, once
        if rcpt == full and phase == "rcpt":
            return "452"  # mailbox full, for good
        if rcpt == gone and phase == "rcpt":
            return "550"  # 5.1.1 no such user
        if rcpt == refused and phase == "data_end":
            return "550"  # 5.1.1 after the payload (the peer stores nothing)
        return None

    peer = smtp_peer_factory(faults)
    emails = seed(db_url, 5, workdir=tmp_path / "seed")
    _run_until_idle(_env(sendguard_env, peer, tmp_path), tmp_path, "run")

    rows = leads(sendguard_env, CAMPAIGN)
    delivered = peer.per_recipient()
    assert delivered == {flaky: 1, fine: 1}, delivered

    # 4xx at RCPT once: deferred, then sent on the retry.
    assert (rows[flaky]["status"], rows[flaky]["attempts"]) == ("sent", 2), rows[flaky]
    assert [(s, c) for s, c, _ in send_log(db_url, flaky)] == [("deferred", 452), ("sent", 250)]
    assert calls[(flaky, "rcpt")] == 2

    # 4xx every time: deferred MAX_ATTEMPTS times with a doubling backoff, then failed for good.
    assert (rows[full]["status"], rows[full]["reason"], rows[full]["attempts"]) == (
        "failed",
        "max_attempts",
        MAX_ATTEMPTS,
    ), rows[full]
    assert [(s, c) for s, c, _ in send_log(db_url, full)] == [("deferred", 452)] * MAX_ATTEMPTS
    assert calls[(full, "rcpt")] == MAX_ATTEMPTS
    reserved_at = [
        t
        for (t,) in sql_rows(
            db_url,
            "SELECT sl.created_at FROM send_log AS sl JOIN lead AS l ON l.id = sl.lead_id"
            " WHERE l.email = :email ORDER BY sl.id",
            {"email": full},
        )
    ]
    gaps = [_seconds(b, a) for a, b in zip(reserved_at, reserved_at[1:], strict=False)]
    # Each retry waits at least its backoff (0.2 s, then 0.4 s), measured on the same sender's clock.
    assert gaps[0] >= RETRY_BASE and gaps[1] >= 2 * RETRY_BASE, gaps

    # 5xx at RCPT: a hard bounce, failed at once, and the address is never contacted again.
    assert (rows[gone]["status"], rows[gone]["reason"], rows[gone]["attempts"]) == (
        "failed",
        "hard_bounce",
        1,
    )
    assert [(s, c) for s, c, _ in send_log(db_url, gone)] == [("failed", 550)]
    assert calls[(gone, "rcpt")] == 1

    # 5xx after the payload: failed, not retried (the injected reply is 5.1.1, an address problem).
    assert (rows[refused]["status"], rows[refused]["attempts"]) == ("failed", 1), rows[refused]
    assert [(s, c) for s, c, _ in send_log(db_url, refused)] == [("failed", 550)]
    assert calls[(refused, "data_end")] == 1

    suppressed = sql_rows(db_url, "SELECT email, reason FROM suppression ORDER BY email")
    assert (gone, "hard_bounce") in suppressed
    assert {e for e, _ in suppressed} <= {gone, refused}, suppressed

    assert rows[fine]["status"] == "sent"
    assert set(rows) == set(emails)


def _seconds(later: datetime | str, earlier: datetime | str) -> float:
    """Raw SQL gives SQLite's timestamps back as text, PostgreSQL's as datetimes."""

    def parse(value: datetime | str) -> datetime:
        return datetime.fromisoformat(value) if isinstance(value, str) else value

    return (parse(later) - parse(earlier)).total_seconds()


@pytest.mark.slow
def test_lost_reply_after_data_is_unknown_until_an_operator_decides(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    confirmed, retried, fine = (lead_email(i) for i in range(3))

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        # The peer stores the message, then hangs up before replying: the sender cannot know.
        if rcpt in (confirmed, retried) and phase == "data_end" and nth == 1:
            return "drop_after_data"
        return None

    peer = smtp_peer_factory(faults)
    seed(db_url, 3, workdir=tmp_path / "seed")
    env = _env(sendguard_env, peer, tmp_path)
    _run_until_idle(env, tmp_path, "run1")

    assert peer.per_recipient() == {confirmed: 1, retried: 1, fine: 1}
    rows = enrollments(db_url)
    for email in (confirmed, retried):
        assert rows[email] == ("unknown", "ambiguous_smtp_outcome", 1), rows[email]
        assert [s for s, _, _ in send_log(db_url, email)] == ["unknown"]
    assert rows[fine][0] == "sent"

    # A second run never retries an unknown send on its own.
    _run_until_idle(env, tmp_path, "run2")
    assert peer.per_recipient() == {confirmed: 1, retried: 1, fine: 1}
    rows = enrollments(db_url)
    assert rows[confirmed][0] == rows[retried][0] == "unknown"

    review = cli_json(["review", "list"], sendguard_env)
    assert isinstance(review, list)
    by_email = {r["email"]: r for r in review}
    assert set(by_email) == {confirmed, retried}, review
    for email in (confirmed, retried):
        assert by_email[email]["campaign"] == CAMPAIGN
        assert by_email[email]["message_id"] == next(
            r.message_id for r in peer.received() if r.recipient == email
        )

    # The operator checked: the first one did arrive.
    ok(run_cli(["review", "deliver", str(by_email[confirmed]["id"])], sendguard_env), "review deliver")
    assert enrollments(db_url)[confirmed][:2] == ("sent", "marked_delivered")
    assert [s for s, _, _ in send_log(db_url, confirmed)] == ["sent"]

    # ...and chose to send the second one again, accepting a possible second copy.
    requeued = run_cli(["review", "requeue", str(by_email[retried]["id"])], sendguard_env)
    ok(requeued, "review requeue")
    assert "second copy" in requeued.stderr
    assert enrollments(db_url)[retried][0] == "queued"
    assert sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status = 'unknown'") == [(0,)]

    _run_until_idle(env, tmp_path, "run3")
    assert peer.per_recipient() == {confirmed: 1, retried: 2, fine: 1}
    rows = leads(sendguard_env, CAMPAIGN)  # the CLI's view, once, at the end
    assert {e: r["status"] for e, r in rows.items()} == {confirmed: "sent", retried: "sent", fine: "sent"}
    assert rows[confirmed]["reason"] == "marked_delivered"
    assert [s for s, _, _ in send_log(db_url, retried)] == ["deferred", "sent"]
    # Both copies carry the same deterministic Message-ID, so the receiving side can drop the second.
    ids = {r.message_id for r in peer.received() if r.recipient == retried}
    assert ids == {rows[retried]["message_id"]}

    events = sql_rows(
        db_url, "SELECT kind, reason FROM campaign_event WHERE kind IN ('delivered', 'requeued')"
    )
    assert sorted(events) == sorted(
        [("delivered", f"send {by_email[confirmed]['id']}"), ("requeued", f"send {by_email[retried]['id']}")]
    )
