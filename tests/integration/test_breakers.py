"""Circuit breakers trip a real `sendguard run` against a real SMTP peer, on both backends.

Each test makes one breaker trip, then checks: the campaign is paused with the breaker as `paused_by`
and a reason with the figures; the audit trail has exactly one `auto_paused` event by that breaker;
nothing was transmitted after the trip (no send_log row gated after the event, the peer holds exactly
the messages sent before it, every later lead is still queued with no attempt used); and after
`sendguard campaign resume` a second run finishes the campaign with every recipient receiving one copy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import text

from sender import campaigns
from sender.clock import DatabaseClock
from sender.db import make_engine
from tests.conftest import run_cli
from tests.integration._sendguard import TICK, cli_json, enrollments, ok, seed, wait_exit
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, sql_rows, start_sender, tail
from tests.smtp_peer import SmtpPeer

pytestmark = pytest.mark.slow

RETRY_BASE = 0.2


def _run_until_idle(env: dict[str, str], tmp_path: Path, name: str, *args: str) -> Path:
    """One real `sendguard run --until-idle`; it exits 0 once the paused campaign leaves nothing to do."""
    log = tmp_path / f"{name}.log"
    proc = start_sender(env, Path(env["SENDGUARD_LOCK_FILE"]), ["--until-idle", *TICK, *args], log_file=log)
    assert wait_exit(proc, 90, log) == 0, tail(log)
    return log


def _assert_tripped(db_url: str, breaker: str) -> str:
    """Paused by `breaker` with one audit event, and no transmission gated after it; returns the reason."""
    ((status, paused_by, reason),) = sql_rows(
        db_url, "SELECT status, paused_by, pause_reason FROM campaign WHERE name = :n", {"n": CAMPAIGN}
    )
    assert (status, paused_by) == ("paused", f"breaker:{breaker}"), (status, paused_by, reason)
    assert reason
    events = sql_rows(db_url, "SELECT actor, reason FROM campaign_event WHERE kind = 'auto_paused'")
    assert events == [(f"breaker:{breaker}", reason)]
    late = sql_rows(
        db_url,
        "SELECT count(*) FROM send_log WHERE transmit_at > "
        "(SELECT created_at FROM campaign_event WHERE kind = 'auto_paused')",
    )
    assert late == [(0,)], "a transmission started after the breaker tripped"
    live = sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status IN ('reserved', 'transmitting')")
    assert live == [(0,)]
    return reason


def _untouched(db_url: str, emails: list[str]) -> None:
    """Every one of `emails` is queued with no attempt used: claimed at most, then handed back."""
    rows = enrollments(db_url)
    assert {e: rows[e][::2] for e in emails} == {e: ("queued", 0) for e in emails}


def _resume_and_finish(
    env: dict[str, str], tmp_path: Path, peer: SmtpPeer, expected: set[str], *, cli: bool = False
) -> None:
    """Resume as an operator would (`campaign resume`, or the same function in-process to spare a
    process start-up), then run again: the campaign finishes, one copy per recipient."""
    if cli:
        ok(run_cli(["campaign", "resume", CAMPAIGN, "--reason", "checked"], env), "campaign resume")
    else:
        engine = make_engine(env["SENDGUARD_DATABASE_URL"])
        try:
            campaigns.resume(
                engine, CAMPAIGN, actor="test:operator", reason="checked", now=DatabaseClock(engine).now()
            )
        finally:
            engine.dispose()
    _run_until_idle(env, tmp_path, "after-resume")
    per_recipient = peer.per_recipient()
    assert set(per_recipient) == expected
    assert {rcpt: n for rcpt, n in per_recipient.items() if n != 1} == {}


def _wire_matches_database(db_url: str, peer: SmtpPeer) -> None:
    """What the database says may have been delivered is exactly what reached the peer."""
    ((delivered,),) = sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status IN ('sent', 'unknown')")
    assert peer.count(CAMPAIGN) == delivered


def test_duplicate_guard_firing_pauses_the_campaign(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    peer = smtp_peer_factory()
    emails = seed(db_url, 6, workdir=tmp_path / "seed")
    # A live send of lead 2 that its enrollment does not know about: what a racing sender leaves.
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status,"
                    " claim_token, attempt, message_id, instance_id, host, pid, created_at)"
                    " SELECT cl.campaign_id, cl.lead_id, cl.id, cl.step, cl.variant_letter, 'sent', 'racer.1',"
                    " 1, '<racer@example.com>', 'racer', 'elsewhere', 1, cl.created_at"
                    " FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id WHERE l.email = :email"
                ),
                {"email": emails[2]},
            )
    finally:
        engine.dispose()
    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=peer.url)

    _run_until_idle(env, tmp_path, "run", "--batch", "1")

    reason = _assert_tripped(db_url, "duplicate")
    assert "duplicate guard fired" in reason
    assert peer.per_recipient() == {emails[0]: 1, emails[1]: 1}
    assert enrollments(db_url)[emails[2]][:2] == ("skipped", "duplicate_prevented")
    _untouched(db_url, emails[3:])
    kinds = [k for (k,) in sql_rows(db_url, "SELECT kind FROM campaign_event ORDER BY id")]
    assert kinds[-2:] == ["duplicate_prevented", "auto_paused"]

    _resume_and_finish(env, tmp_path, peer, set(emails) - {emails[2]})


def test_hard_failures_over_the_last_sends_pause_the_campaign(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    bad = {lead_email(i) for i in (1, 3, 5)}

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        return "550" if rcpt in bad and phase == "rcpt" else None

    peer = smtp_peer_factory(faults)
    emails = seed(
        db_url,
        10,
        workdir=tmp_path / "seed",
        toml_extra="[breakers]\nhard_failures = 3\nhard_failures_window = 5\n",
    )
    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=peer.url)

    # Batches of four: 0-3, then 4-7, where lead 5 is the third failure within five sends; 6 and 7
    # were already reserved in that batch and must meet the paused campaign at the gate.
    _run_until_idle(env, tmp_path, "run", "--batch", "4")

    reason = _assert_tripped(db_url, "hard_failures")
    assert reason == "3 hard failures (5xx) among the last 5 sends (threshold 3)"
    assert peer.per_recipient() == {emails[0]: 1, emails[2]: 1, emails[4]: 1}
    _wire_matches_database(db_url, peer)
    rows = enrollments(db_url)
    assert {e: rows[e][:2] for e in sorted(bad)} == {e: ("failed", "hard_bounce") for e in sorted(bad)}
    _untouched(db_url, emails[6:])
    status = cli_json(["status"], env)
    assert isinstance(status, dict)
    (campaign,) = status["campaigns"]
    assert (campaign["status"], campaign["paused_by"], campaign["pause_reason"]) == (
        "paused",
        "breaker:hard_failures",
        reason,
    )

    _resume_and_finish(env, tmp_path, peer, set(emails) - bad, cli=True)


def test_unknowns_pause_the_campaign(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    dropped = {lead_email(1), lead_email(3)}

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        # The peer keeps the message, then drops the connection before replying: fate unknown.
        return "drop_after_data" if rcpt in dropped and phase == "data_end" else None

    peer = smtp_peer_factory(faults)
    emails = seed(db_url, 8, workdir=tmp_path / "seed", toml_extra="[breakers]\nunknowns = 2\n")
    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=peer.url)

    _run_until_idle(env, tmp_path, "run", "--batch", "2")

    reason = _assert_tripped(db_url, "unknowns")
    assert reason.startswith("2 sends of unknown outcome") and "(threshold 2)" in reason
    assert set(peer.per_recipient()) == set(emails[:4])
    _wire_matches_database(db_url, peer)
    rows = enrollments(db_url)
    assert {e: rows[e][0] for e in emails[:4]} == {
        emails[0]: "sent",
        emails[1]: "unknown",
        emails[2]: "sent",
        emails[3]: "unknown",
    }
    _untouched(db_url, emails[4:])

    # The unknowns stay for review (never retried by themselves); the rest goes out after the resume.
    _resume_and_finish(env, tmp_path, peer, set(emails))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_authentication_failure_pauses_the_campaign_and_keeps_the_lead(
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    user, password = "ana", "S3cret-pass"
    creds = {"password": password}

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        good = auth_data.login == user.encode() and auth_data.password == creds["password"].encode()
        return AuthResult(success=good, handled=False)

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        # The account's password is changed under the sender, and the server closes the connection:
        # the sender's next login (for lead 3) is refused.
        if rcpt == lead_email(2) and phase == "rcpt" and nth == 1:
            creds["password"] = "rotated"
            return "421"
        return None

    peer = smtp_peer_factory(
        faults,
        smtp_kwargs={"authenticator": authenticator, "auth_required": True, "auth_require_tls": False},
    )
    emails = seed(db_url, 8, workdir=tmp_path / "seed")
    url = peer.url.replace("smtp://", f"smtp://{user}:{password}@")
    env = sender_env(sendguard_env, tmp_path / "sender.lock", smtp_url=url, retry_base_seconds=RETRY_BASE)

    log = _run_until_idle(env, tmp_path, "run", "--batch", "4")

    reason = _assert_tripped(db_url, "auth")
    assert reason.startswith("SMTP authentication failed: 535"), reason
    assert password not in reason and password not in log.read_text()
    assert peer.per_recipient() == {emails[0]: 1, emails[1]: 1}
    # One refused login, then no further connection: the sender stopped hammering the server.
    assert peer.connections() == 2
    rows = enrollments(db_url)
    assert rows[emails[2]] == ("queued", "deferred", 1)  # the 421: an ordinary deferral
    assert rows[emails[3]] == ("queued", "auth_failed", 0)  # released, not failed: no attempt used
    _untouched(db_url, emails[3:])

    creds["password"] = password  # the operator fixes the credentials, then resumes
    _resume_and_finish(env, tmp_path, peer, set(emails))
