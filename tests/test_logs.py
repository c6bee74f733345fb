"""Logs (sender/logs.py): the JSON and text formats, address masking, secret scrubbing, and the lines a
real `sendguard run` writes for every state transition."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlmodel.sql.sqltypes import UTCDateTime

from sender import logs
from sender.claim import Claimed, LeadData
from sender.db import make_engine
from tests.integration._sendguard import TICK, seed, wait_exit, wait_for
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, sql_rows, start_sender
from tests.smtp_peer import SmtpPeer

DB_SECRET = "DbPw-9f3k2"
SMTP_SECRET = "SmtpPw-7q1x"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """sender/logs configured on a buffer; the handler is removed afterwards."""
    stream = io.StringIO()
    handler = logs.configure(level="DEBUG", fmt="json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logs.configure(level="INFO", stream=io.StringIO())  # reset module state for later tests
        logging.getLogger().removeHandler(logging.getLogger().handlers[-1])


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("alice@example.com", "a***@example.com"),
        ("A@x.org", "A***@x.org"),
        ("@example.com", "***@example.com"),
        ('"a@b"@example.com', '"***@example.com'),
        ("not-an-address", "***"),
        ("trailing@", "***"),
        ("", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert logs.mask_email(address) == masked


def test_json_lines_have_ts_level_logger_event_and_the_extra_fields(captured: io.StringIO) -> None:
    logging.getLogger("sendguard.test").warning("deferred", extra={"campaign": "c1", "smtp_code": 451})
    logging.getLogger("sendguard.test").info("plain %s message", "formatted")
    first, second = lines(captured)
    assert list(first)[:4] == ["ts", "level", "logger", "event"]
    assert (
        first["level"] == "WARNING" and first["logger"] == "sendguard.test" and first["event"] == "deferred"
    )
    assert (first["campaign"], first["smtp_code"]) == ("c1", 451)
    ts = datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60
    assert second["event"] == "plain formatted message" and "campaign" not in second


def test_text_lines_append_the_fields_as_key_value() -> None:
    stream = io.StringIO()
    handler = logs.configure(fmt="text", stream=stream)
    try:
        logging.getLogger("sendguard.test").info("sent", extra={"campaign": "spring 2026", "smtp_code": 250})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert line.endswith('sendguard.test: sent campaign="spring 2026" smtp_code=250'), line
    assert " INFO " in line


def test_secrets_are_scrubbed_from_message_fields_and_tracebacks(captured: io.StringIO) -> None:
    from sender.config import load_settings, secrets_of

    settings = load_settings(
        {
            "SENDGUARD_DATABASE_URL": f"postgresql://sg:{DB_SECRET}%21@db/sg",
            "SENDGUARD_SMTP_URL": f"smtp://u:{SMTP_SECRET}@mail:25",
        }
    )
    found = secrets_of(settings)
    assert {f"{DB_SECRET}!", f"{DB_SECRET}%21", SMTP_SECRET} <= set(found)
    handler = logs.configure(level="DEBUG", fmt="json", stream=captured, secrets=found)
    log = logging.getLogger("sendguard.test")
    log.error("connect to %s failed", settings.database_url, extra={"url": settings.smtp_url})
    try:
        raise RuntimeError(f"password was {DB_SECRET}!")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger().removeHandler(handler)
    out = captured.getvalue()
    assert DB_SECRET not in out and SMTP_SECRET not in out
    first, second = lines(captured)
    assert "sg:***@db" in first["event"] and first["url"] == "smtp://u:***@mail:25"
    assert "RuntimeError: password was ***" in second["exc"]


def test_recipients_are_masked_unless_asked_and_the_instance_is_bound(captured: io.StringIO) -> None:
    c = Claimed(enrollment_id=7, campaign_id=3, lead_id=11, step=0, variant="A", attempts=1, token="t")
    lead = LeadData("alice@example.com", None, None, "{}", suppressed=False)
    other = LeadData("bob@example.com", None, None, "{}", suppressed=True)
    c2 = Claimed(enrollment_id=8, campaign_id=3, lead_id=12, step=0, variant="B", attempts=1, token="u")

    class _R:  # a Reservation's shape, enough for the helper
        claimed, send_id = c, 99

    logs.bind(instance="inst-1")
    logs.claimed("spring", [c, c2], {11: lead, 12: other}, [_R()])  # type: ignore[list-item]
    got = [(d["event"], d["enrollment_id"], d.get("recipient"), d.get("reason")) for d in lines(captured)]
    assert got == [
        ("reserved", 7, "a***@example.com", None),
        ("skipped", 8, "b***@example.com", "suppressed"),
    ]
    assert {d["instance"] for d in lines(captured)} == {"inst-1"}
    assert {d["campaign"] for d in lines(captured)} == {"spring"}
    logs.configure(level="DEBUG", fmt="json", stream=captured, show_recipients=True)
    logs.transition("transmitting", c, recipient=logs.recipient(lead.email))
    assert lines(captured)[-1]["recipient"] == "alice@example.com"
    logs.bind(instance=None)


def test_info_keeps_one_line_per_enrollment_its_outcome(captured: io.StringIO) -> None:
    c = Claimed(enrollment_id=7, campaign_id=3, lead_id=11, step=0, variant="A", attempts=1, token="t")
    c2 = Claimed(enrollment_id=8, campaign_id=3, lead_id=12, step=0, variant="B", attempts=1, token="u")
    leads = {
        11: LeadData("alice@example.com", None, None, "{}", suppressed=False),
        12: LeadData("bob@example.com", None, None, "{}", suppressed=True),
    }

    class _R:  # a Reservation's shape, enough for the helper
        claimed, send_id = c, 99

    logs.configure(level="INFO", fmt="json", stream=captured)
    logs.claimed("spring", [c, c2], leads, [_R()])  # type: ignore[list-item]
    # The reserved step is not an outcome; the skipped enrollment's is.
    assert [(d["event"], d["enrollment_id"]) for d in lines(captured)] == [("skipped", 8)]


# --- a real run ------------------------------------------------------------------------------------


def _expire_a_claim(db_url: str, email: str) -> None:
    """Leave `email`'s enrollment as a dead sender would: `sending`, its lease long expired, no send."""
    engine = make_engine(db_url)
    stmt = text(
        "UPDATE campaign_lead SET status = 'sending', claim_token = 'dead.0', claimed_by = 'dead', attempts = 1,"
        " lease_expires_at = :past WHERE lead_id = (SELECT id FROM lead WHERE email = :email)"
    ).bindparams(bindparam("past", type_=UTCDateTime()))
    try:
        with engine.begin() as conn:
            assert (
                conn.execute(stmt, {"past": datetime(2000, 1, 1, tzinfo=UTC), "email": email}).rowcount == 1
            )
    finally:
        engine.dispose()


def _json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        out.append(json.loads(line))  # every line is one JSON object, nothing else
    return out


@pytest.mark.slow
def test_a_real_run_logs_every_transition_as_json_without_secrets_or_addresses(
    db_url: str, sendguard_env: dict[str, str], smtp_peer_factory, tmp_path: Path
) -> None:
    fine, flaky, gone, lost, orphan = (lead_email(i) for i in range(5))

    def faults(rcpt: str, phase: str, nth: int) -> str | None:
        if rcpt == flaky and phase == "rcpt" and nth == 1:
            return "451"
        if rcpt == gone and phase == "rcpt":
            return "550"
        if rcpt == lost and phase == "data_end":
            return "drop_after_data"
        return None

    peer: SmtpPeer = smtp_peer_factory(faults)
    emails = seed(db_url, 5, workdir=tmp_path / "seed")
    _expire_a_claim(db_url, orphan)
    url = db_url
    if make_url(db_url).get_backend_name() == "postgresql":  # trust auth: any password is accepted
        url = make_url(db_url).set(password=DB_SECRET).render_as_string(hide_password=False)
    env = sender_env(sendguard_env, tmp_path / "s.lock", smtp_url=peer.url, retry_base_seconds=0)
    env["SENDGUARD_DATABASE_URL"] = url
    log_file = tmp_path / "run.log"
    proc = start_sender(
        env,
        tmp_path / "s.lock",
        ["--log-format", "json", "--log-level", "DEBUG", "--until-idle", *TICK],
        log_file=log_file,
    )
    assert wait_exit(proc, 120, log_file) == 0, log_file.read_text()

    raw = log_file.read_text()
    records = _json_lines(log_file)
    assert DB_SECRET not in raw
    leaked = [e for e in emails if e in raw]
    assert not leaked, f"unmasked recipient addresses in the log: {leaked}"
    assert "l***@example.com" in raw

    by_event: dict[str, list[dict]] = {}
    for r in records:
        by_event.setdefault(r["event"], []).append(r)
    for event in (
        "reserved",
        "transmitting",
        "sent",
        "deferred",
        "failed",
        "unknown",
        "reaped",
        "tick",
    ):
        assert event in by_event, f"no {event!r} line in:\n{raw}"
    (instance,) = {r[0] for r in sql_rows(db_url, "SELECT id FROM sender_instance")}
    for event in ("reserved", "transmitting", "sent", "deferred", "failed", "unknown"):
        for r in by_event[event]:
            assert r["campaign"] == CAMPAIGN and r["instance"] == instance, r
            assert isinstance(r["enrollment_id"], int) and isinstance(r["attempt"], int), r
    assert [(r["smtp_code"], r["attempt"]) for r in by_event["deferred"]] == [(451, 1)]
    assert [r["smtp_code"] for r in by_event["failed"]] == [550]
    assert [r["smtp_code"] for r in by_event["unknown"]] == [None]
    assert {r["smtp_code"] for r in by_event["sent"]} == {250} and len(
        by_event["sent"]
    ) == 3  # fine, flaky, orphan
    # The steps of a send are DEBUG lines; its outcome is the one line INFO keeps (checked below).
    assert {r["level"] for r in by_event["reserved"] + by_event["transmitting"]} == {"DEBUG"}
    assert [r["to"] for r in by_event["reaped"]] == ["queued"]
    assert sum(r["sent"] for r in by_event["tick"]) == 3
    # An SMTP password in the URL (this peer offers no AUTH, so the login fails and the auth breaker
    # pauses the campaign): neither the password nor the URL's userinfo reaches the log.
    seed(db_url, 1, workdir=tmp_path / "seed2", name="auth-campaign")
    env["SENDGUARD_SMTP_URL"] = peer.url.replace("smtp://", f"smtp://mailer:{SMTP_SECRET}@")
    auth_log = tmp_path / "auth.log"
    proc = start_sender(env, tmp_path / "s.lock", ["--log-format", "json", "--once"], log_file=auth_log)
    assert wait_exit(proc, 60, auth_log) == 0, auth_log.read_text()
    auth_raw = auth_log.read_text()
    assert SMTP_SECRET not in auth_raw and DB_SECRET not in auth_raw
    # At the default level (INFO) the steps of a send are not logged, only what became of it.
    assert not {"reserved", "transmitting"} & {r["event"] for r in _json_lines(auth_log)}, auth_raw
    assert any(r["level"] == "ERROR" for r in _json_lines(auth_log)), auth_raw


@pytest.mark.slow
def test_a_refused_gate_logs_released(sqlite_url: str, tmp_path: Path) -> None:
    """Paused between reserve and gate (a failpoint stalls the sender there): the claim is released."""
    from sender import campaigns
    from sender.clock import DatabaseClock
    from sender.migrate import upgrade

    upgrade(sqlite_url)
    seed(sqlite_url, 1, workdir=tmp_path / "seed")
    env = sender_env({**__import__("os").environ, "SENDGUARD_DATABASE_URL": sqlite_url}, tmp_path / "s.lock")
    env["SENDGUARD_SMTP_URL"] = "smtp://127.0.0.1:9"  # never reached: the gate refuses first
    env["SENDGUARD_FAILPOINTS"] = "after_reserve=1*stall(6)"
    log_file = tmp_path / "run.log"
    proc = start_sender(
        env,
        tmp_path / "s.lock",
        ["--log-format", "json", "--log-level", "DEBUG", "--until-idle", *TICK],
        log_file=log_file,
    )
    try:
        wait_for(
            lambda: (
                sql_rows(sqlite_url, "SELECT count(*) FROM send_log WHERE status = 'reserved'")[0][0] == 1
            ),
            60,
            "the reservation",
            log_file,
        )
        engine = make_engine(sqlite_url)
        try:
            campaigns.pause(engine, CAMPAIGN, actor="test", reason="gate", now=DatabaseClock(engine).now())
        finally:
            engine.dispose()
        assert wait_exit(proc, 60, log_file) == 0, log_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    released = [r for r in _json_lines(log_file) if r["event"] == "released"]
    assert [(r["reason"], r["campaign"]) for r in released] == [("gate_refused", CAMPAIGN)], (
        log_file.read_text()
    )
