"""The fault catalogue, SMTP half: what each kind of SMTP failure does to an enrollment, checked at the
real peer (tests/smtp_peer.py: what reached the wire) and in the database. Every case runs a real
`sendguard run` process on SQLite and on PostgreSQL.

End states: S sent, F failed, R retried (deferred, then sent once the fault clears), U unknown.

Catalogue case -> test (the database half is in test_faults_db.py):

1. 4xx at MAIL / after DATA -> R; 4xx after DATA that never clears -> F(max_attempts):
   `test_4xx_at_mail_and_after_data_is_retried_then_capped` (this module).
   4xx at RCPT -> R, and 4xx at RCPT that never clears -> F(max_attempts):
   `test_smtp_faults.py::test_smtp_replies_decide_each_outcome` (leads `flaky` and `full`).
2. 5xx at RCPT and after DATA -> F, hard bounce, address suppressed, a later campaign skips it; a
   5xx with a policy code (5.7.1) at RCPT or after DATA -> F without suppression:
   `test_hard_bounce_suppresses_the_address_for_a_later_campaign` (this module; the F outcomes
   alone are also in `test_smtp_faults.py::test_smtp_replies_decide_each_outcome`).
3. 421 at the greeting / connection refused -> R:
   `test_refused_connection_and_421_greeting_are_retried` (this module).
4. The server stores the message, then resets the connection before replying -> U:
   `test_reset_after_storing_is_unknown` (this module: TCP RST); the FIN variant and the operator's
   review of it: `test_smtp_faults.py::test_lost_reply_after_data_is_unknown_until_an_operator_decides`.
5. Reply slower than the client timeout -> U: `test_reply_slower_than_the_timeout_is_unknown`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sender import campaigns
from sender.clock import DatabaseClock
from sender.db import make_engine
from tests.integration._sendguard import (
    TICK,
    enrollments,
    seed,
    send_log,
    senders,
    spawn,
    wait_exit,
    wait_for,
)
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, sql_rows, start_sender
from tests.smtp_peer import PHASES, SmtpPeer

MAX_ATTEMPTS = 3
RETRY_BASE = 0.2


def _env(sendguard_env: dict[str, str], url: str, tmp_path: Path, **settings: object) -> dict[str, str]:
    settings = {"retry_base_seconds": RETRY_BASE, "max_attempts": MAX_ATTEMPTS, **settings}
    return sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=url, **settings)


def _run_until_idle(env: dict[str, str], tmp_path: Path, name: str, *args: str) -> str:
    """One `sendguard run --until-idle` to completion; returns its log."""
    log = tmp_path / f"{name}.log"
    proc = start_sender(env, Path(env["SENDGUARD_LOCK_FILE"]), ["--until-idle", *TICK, *args], log_file=log)
    assert wait_exit(proc, 60, log) == 0, log.read_text()
    return log.read_text()


def _history(db_url: str, email: str) -> list[tuple[str, int | None]]:
    """(send_log status, SMTP code) of each attempt, in order."""
    return [(status, code) for status, code, _ in send_log(db_url, email)]


def _replies(db_url: str, email: str) -> list[str]:
    rows = sql_rows(
        db_url,
        "SELECT sl.smtp_reply FROM send_log AS sl JOIN lead AS l ON l.id = sl.lead_id"
        " WHERE l.email = :email ORDER BY sl.id",
        {"email": email},
    )
    return [reply or "" for (reply,) in rows]


# --- 1. 4xx: deferred, retried, capped ------------------------------------------------------------


def test_4xx_at_mail_and_after_data_is_retried_then_capped(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    at_mail, data_once, data_always = (lead_email(i) for i in range(3))

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        if phase == "mail" and nth == 1:
            return "451"  # the first MAIL FROM of the run (lead 0: --batch 1 claims in id order)
        if phase == "data_end" and rcpt == data_once and nth == 1:
            return "451"
        if phase == "data_end" and rcpt == data_always:
            return "452"
        return None

    peer = smtp_peer_factory(faults, phases=PHASES)
    seed(db_url, 3, workdir=tmp_path / "seed")
    _run_until_idle(_env(sendguard_env, peer.url, tmp_path), tmp_path, "run", "--batch", "1")

    # R: deferred once, then sent; the peer got exactly one copy each.
    assert peer.per_recipient() == {at_mail: 1, data_once: 1}
    assert _history(db_url, at_mail) == [("deferred", 451), ("sent", 250)]
    assert "Temporary local problem" in _replies(db_url, at_mail)[0]
    assert _history(db_url, data_once) == [("deferred", 451), ("sent", 250)]
    rows = enrollments(db_url)
    assert rows[at_mail] == ("sent", None, 2) and rows[data_once] == ("sent", None, 2), rows
    # F: a 4xx that never clears ends failed after the attempt cap, never delivered, not suppressed.
    assert _history(db_url, data_always) == [("deferred", 452)] * MAX_ATTEMPTS
    assert rows[data_always] == ("failed", "max_attempts", MAX_ATTEMPTS), rows[data_always]
    assert sql_rows(db_url, "SELECT count(*) FROM suppression") == [(0,)]


# --- 2. 5xx: failed; a hard bounce suppresses the address -------------------------------------------

LATER = "it-later"


@pytest.mark.slow  # two sender runs
def test_hard_bounce_suppresses_the_address_for_a_later_campaign(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    rcpt_gone, data_gone, policy, rcpt_policy, fine = (lead_email(i) for i in range(5))
    faults_on = {"value": True}

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        if not faults_on["value"]:
            return None
        if phase == "rcpt" and rcpt == rcpt_gone:
            return "550"  # 550 5.1.1 no such user
        if phase == "data_end" and rcpt == data_gone:
            return "550"
        if phase == "data_end" and rcpt == policy:
            return "554_policy"  # 554 5.7.1 rejected by content policy: the address is fine
        if phase == "rcpt" and rcpt == rcpt_policy:
            return "554_policy"
        return None

    peer = smtp_peer_factory(faults)
    seed(db_url, 5, workdir=tmp_path / "seed")
    # The later campaign (think: the next step) already holds the same leads, enrolled before any bounce.
    seed(db_url, 5, workdir=tmp_path / "seed-later", name=LATER, start=False)
    env = _env(sendguard_env, peer.url, tmp_path)
    _run_until_idle(env, tmp_path, "run1")

    rows = enrollments(db_url)
    assert rows[rcpt_gone] == ("failed", "hard_bounce", 1), rows[rcpt_gone]
    assert rows[data_gone] == ("failed", "hard_bounce", 1), rows[data_gone]
    assert rows[policy] == ("failed", "rejected", 1), rows[policy]
    assert rows[rcpt_policy] == ("failed", "rejected", 1), rows[rcpt_policy]
    assert rows[fine][0] == "sent"
    assert _history(db_url, rcpt_gone) == [("failed", 550)]
    assert _history(db_url, data_gone) == [("failed", 550)]
    assert _history(db_url, policy) == _history(db_url, rcpt_policy) == [("failed", 554)]
    assert peer.per_recipient() == {fine: 1}
    assert sorted(sql_rows(db_url, "SELECT email, reason FROM suppression")) == [
        (rcpt_gone, "hard_bounce"),
        (data_gone, "hard_bounce"),
    ]

    # The later campaign runs against a healthy server: the bounced addresses are skipped, the one
    # rejected by policy are not suppressed and get the new message.
    faults_on["value"] = False
    engine = make_engine(db_url)
    try:
        campaigns.start(engine, LATER, actor="test", reason=None, now=DatabaseClock(engine).now())
    finally:
        engine.dispose()
    _run_until_idle(env, tmp_path, "run2")
    later = enrollments(db_url, LATER)
    assert later[rcpt_gone][:2] == later[data_gone][:2] == ("skipped", "suppressed"), later
    assert later[policy][0] == later[rcpt_policy][0] == later[fine][0] == "sent", later
    assert {r.recipient for r in peer.received() if r.campaign == LATER} == {policy, rcpt_policy, fine}
    assert peer.count(LATER) == 3
    assert peer.count(CAMPAIGN) == 1


# --- 3. the server is not there, or refuses at the greeting -----------------------------------------


@pytest.mark.slow
def test_refused_connection_and_421_greeting_are_retried(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    emails = seed(db_url, 2, workdir=tmp_path / "seed")
    # A bound socket that does not listen: connecting to its port is refused (RST), and no other
    # process can take the port before the peer does.
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    port = placeholder.getsockname()[1]
    env = _env(sendguard_env, f"smtp://127.0.0.1:{port}", tmp_path, max_attempts=8)

    def greeting_refused_once(rcpt: str, phase: str, nth: int) -> str | None:
        return "421" if phase == "connect" and nth == 1 else None

    log = tmp_path / "run.log"
    with senders() as procs:
        proc = spawn(
            procs, env, Path(env["SENDGUARD_LOCK_FILE"]), ["--until-idle", *TICK, "--batch", "1"], log
        )
        # The send_log row exists from the reservation on: wait for its outcome.
        refused_yet = lambda: any(s == "deferred" for e in emails for s, _ in _history(db_url, e))  # noqa: E731
        wait_for(refused_yet, 30, "a refused attempt", log)
        placeholder.close()
        peer = smtp_peer_factory(greeting_refused_once, port=port, phases=PHASES)
        assert wait_exit(proc, 60, log) == 0, log.read_text()

    assert peer.per_recipient() == dict.fromkeys(emails, 1)
    rows = enrollments(db_url)
    refused = greeted_421 = 0
    for email in emails:
        history, replies = _history(db_url, email), _replies(db_url, email)
        assert rows[email][0] == "sent" and history[-1] == ("sent", 250), (email, history, replies)
        assert all(status == "deferred" for status, _ in history[:-1]), history
        for (_, code), reply in zip(history[:-1], replies, strict=False):
            # Nobody listening: a deferral with no SMTP code. The 421 greeting: one with its code.
            refused += code is None and "refused" in reply.lower()
            greeted_421 += code == 421 and reply.startswith("421 4.7.0")
    assert refused >= 1  # at least the attempt the test waited for
    assert greeted_421 == 1  # the one greeting refusal deferred one attempt, and only one
    assert peer.connections() >= 2  # the 421 closed its connection; the sender came back on a new one


# --- 4./5. the reply after the payload is lost: unknown -------------------------------------------


def test_reset_after_storing_is_unknown(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    reset, fine = lead_email(0), lead_email(1)

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        return "reset_after_data" if rcpt == reset and phase == "data_end" else None

    peer = smtp_peer_factory(faults)
    seed(db_url, 2, workdir=tmp_path / "seed")
    _run_until_idle(_env(sendguard_env, peer.url, tmp_path), tmp_path, "run")

    # The peer has it; the sender cannot know, so it says unknown and never retries on its own.
    assert peer.per_recipient() == {reset: 1, fine: 1}
    rows = enrollments(db_url)
    assert rows[reset] == ("unknown", "ambiguous_smtp_outcome", 1), rows[reset]
    assert _history(db_url, reset) == [("unknown", None)]
    assert "reset" in _replies(db_url, reset)[0].lower()
    assert rows[fine][0] == "sent"  # the sender reconnected for the next lead


SMTP_TIMEOUT = 1.0


def test_reply_slower_than_the_timeout_is_unknown(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory: Callable[..., SmtpPeer], tmp_path: Path
) -> None:
    slow, fine = lead_email(0), lead_email(1)

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        # Stored, then no reply until the client gives up.
        return "hang_after_data" if rcpt == slow and phase == "data_end" else None

    peer = smtp_peer_factory(faults)
    seed(db_url, 2, workdir=tmp_path / "seed")
    started = time.monotonic()
    _run_until_idle(_env(sendguard_env, peer.url, tmp_path, smtp_timeout=SMTP_TIMEOUT), tmp_path, "run")
    assert time.monotonic() - started >= SMTP_TIMEOUT  # the sender did wait for the reply

    assert peer.per_recipient() == {slow: 1, fine: 1}
    rows = enrollments(db_url)
    assert rows[slow] == ("unknown", "ambiguous_smtp_outcome", 1), rows[slow]
    assert _history(db_url, slow) == [("unknown", None)]
    assert "timed out" in _replies(db_url, slow)[0].lower()
    assert rows[fine][0] == "sent"
