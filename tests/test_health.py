"""`sendguard health` checks (sender/health.py) on real databases, and its exit codes through the CLI.

The end-to-end version, against a real running and stopped `sendguard run`, is
tests/integration/test_health.py.
"""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlmodel.sql.sqltypes import UTCDateTime

from sender import campaigns
from sender.clock import DatabaseClock
from sender.config import Settings
from sender.db import make_engine
from sender.errors import UsageError
from sender.health import Level, acknowledge, check_all
from tests.conftest import run_cli
from tests.integration._sendguard import seed
from tests.integration.helpers import CAMPAIGN

SECRET = "HealthPw-5z8"


def report(url: str, *, within: float = 30, hours: float = 24):
    return check_all(Settings(database_url=url), heartbeat_within=within, unknown_older_than_hours=hours)


def levels(r) -> dict[str, Level]:
    return {c.name: c.level for c in r.checks}


def reason(r, name: str) -> str:
    return next(c.reason for c in r.checks if c.name == name)


def db_now(url: str) -> datetime:
    engine = make_engine(url)
    try:
        return DatabaseClock(engine).now()
    finally:
        engine.dispose()


def execute(url: str, sql: str, **params: object) -> None:
    times = [bindparam(k, type_=UTCDateTime()) for k, v in params.items() if isinstance(v, datetime)]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql).bindparams(*times), params)
    finally:
        engine.dispose()


def add_sender(url: str, sid: str, *, age: float, slot: int | None = 0, stopped: bool = False) -> None:
    now = db_now(url)
    beat = now - timedelta(seconds=age)
    execute(
        url,
        "INSERT INTO sender_instance (id, host, pid, version, started_at, heartbeat_at, stopped_at, slot)"
        " VALUES (:id, 'h', 1, 't', :beat, :beat, :stopped, :slot)",
        id=sid, beat=beat, stopped=beat if stopped else None, slot=slot,
    )  # fmt: skip


# --- database and schema -----------------------------------------------------------------------


def test_a_missing_sqlite_file_is_unhealthy_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    r = report(f"sqlite:///{path}")
    assert r.exit_code == 2 and levels(r) == {"database": Level.UNHEALTHY}
    assert str(path) in reason(r, "database") and not path.exists()


def test_an_unreachable_server_is_unhealthy_without_the_password() -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = report(f"postgresql+psycopg://sg:{SECRET}@127.0.0.1:{port}/sg")
    assert r.exit_code == 2 and levels(r) == {"database": Level.UNHEALTHY}
    assert reason(r, "database").startswith("database unreachable: OperationalError")
    assert SECRET not in json.dumps(r.as_json())


def test_an_unmigrated_database_is_unhealthy_and_nothing_else_is_read(sqlite_url: str) -> None:
    make_engine(sqlite_url).connect().close()  # the file exists, the schema does not
    r = report(sqlite_url)
    assert levels(r) == {"database": Level.OK, "schema": Level.UNHEALTHY}
    assert "schema is empty" in reason(r, "schema") and "db upgrade" in reason(r, "schema")


# --- senders ---------------------------------------------------------------------------------------


def test_sender_heartbeats_decide_between_healthy_degraded_and_unhealthy(db_url: str) -> None:
    r = report(db_url)
    assert (r.exit_code, reason(r, "sender")) == (2, "no live sender: none has ever registered")
    add_sender(db_url, "old", age=90)
    r = report(db_url, within=30)
    assert r.exit_code == 2
    assert re.search(
        r"\(heartbeat within 30s\): sender old \(h pid 1\) last heartbeat \d+s ago", reason(r, "sender")
    )
    assert report(db_url, within=300).exit_code == 0, "the threshold is the operator's"
    add_sender(db_url, "stopped", age=1, stopped=True)
    r = report(db_url, within=30)
    assert r.exit_code == 2 and "sender stopped (h pid 1) stopped" in reason(r, "sender")
    add_sender(db_url, "standby", age=1, slot=None)
    r = report(db_url, within=30)
    assert (r.exit_code, levels(r)["sender"]) == (1, Level.DEGRADED)
    assert "all on standby" in reason(r, "sender")
    add_sender(db_url, "active", age=1, slot=0)
    r = report(db_url, within=30)
    assert r.exit_code == 0 and reason(r, "sender") == "2 live sender(s), 1 active"


# --- auto-pauses and unknowns ----------------------------------------------------------------------


def _auto_pause(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            campaign_id = conn.execute(
                text("SELECT id FROM campaign WHERE name = :n"), {"n": CAMPAIGN}
            ).scalar()
            assert campaigns.auto_pause(
                conn, campaign_id, breaker="auth", reason="login refused", now=db_now(url)
            )
    finally:
        engine.dispose()


def test_an_auto_pause_is_degraded_until_acknowledged_or_resumed(db_url: str, tmp_path: Path) -> None:
    seed(db_url, 1, workdir=tmp_path)
    add_sender(db_url, "live", age=0)
    assert report(db_url).exit_code == 0
    engine = make_engine(db_url)
    try:
        with pytest.raises(UsageError, match="has no unacknowledged auto-pause"):
            acknowledge(engine, CAMPAIGN, actor="t", reason=None, now=db_now(db_url))
        # A manual pause is the operator's own doing: nothing to flag.
        campaigns.pause(engine, CAMPAIGN, actor="t", reason="manual", now=db_now(db_url))
        assert report(db_url).exit_code == 0
        campaigns.resume(engine, CAMPAIGN, actor="t", reason=None, now=db_now(db_url))

        _auto_pause(db_url)
        r = report(db_url)
        assert (r.exit_code, levels(r)["auto_paused"]) == (1, Level.DEGRADED)
        assert f"campaign '{CAMPAIGN}' auto-paused by breaker:auth" in reason(r, "auto_paused")
        assert "login refused" in reason(r, "auto_paused")
        acknowledge(engine, CAMPAIGN, actor="t", reason="looked at it", now=db_now(db_url))
        assert report(db_url).exit_code == 0, "acknowledged: still paused, no longer unseen"
        with pytest.raises(UsageError):
            acknowledge(engine, CAMPAIGN, actor="t", reason=None, now=db_now(db_url))

        campaigns.resume(engine, CAMPAIGN, actor="t", reason=None, now=db_now(db_url))
        _auto_pause(db_url)  # a new auto-pause after the acknowledgement is unseen again
        assert report(db_url).exit_code == 1
        campaigns.resume(engine, CAMPAIGN, actor="t", reason=None, now=db_now(db_url))
        assert report(db_url).exit_code == 0, "resuming acknowledges too"
    finally:
        engine.dispose()


def test_unknown_sends_older_than_the_threshold_are_degraded(db_url: str, tmp_path: Path) -> None:
    seed(db_url, 2, workdir=tmp_path)
    add_sender(db_url, "live", age=0)
    now = db_now(db_url)
    for i, age_hours in enumerate((30, 2)):
        execute(
            db_url,
            "INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status,"
            " claim_token, attempt, message_id, instance_id, host, pid, created_at, transmit_at, finished_at)"
            " SELECT cl.campaign_id, cl.lead_id, cl.id, 0, 'A', 'unknown', :token, 1, :mid, 'x', 'h', 1,"
            " :at, :at, :at FROM campaign_lead AS cl ORDER BY cl.id LIMIT 1 OFFSET :i",
            token=f"t{i}", mid=f"<m{i}@x>", at=now - timedelta(hours=age_hours), i=i,
        )  # fmt: skip
    r = report(db_url, hours=24)
    assert (r.exit_code, levels(r)["unknowns"]) == (1, Level.DEGRADED)
    assert reason(r, "unknowns").startswith("1 unknown send(s) older than 24 h await review (oldest 30.0 h)")
    assert report(db_url, hours=1).checks[-1].reason.startswith("2 unknown send(s)")
    assert report(db_url, hours=48).exit_code == 0


# --- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_exit_codes_lines_and_json(db_url: str, sendguard_env: dict[str, str], tmp_path: Path) -> None:
    unhealthy = run_cli(["health"], sendguard_env)
    assert unhealthy.returncode == 2, unhealthy.stderr
    out = unhealthy.stdout.splitlines()
    assert out[0] == "unhealthy" and out[1].startswith("unhealthy: no live sender")
    assert all(line.split(": ", 1)[0] in ("ok", "degraded", "unhealthy") for line in out[1:])

    seed(db_url, 1, workdir=tmp_path)
    add_sender(db_url, "live", age=0)
    _auto_pause(db_url)
    degraded = run_cli(["health", "--json", "--heartbeat-within", "60"], sendguard_env)
    assert degraded.returncode == 1, degraded.stderr
    shown = json.loads(degraded.stdout)
    assert (shown["status"], shown["exit_code"]) == ("degraded", 1)
    assert {c["name"]: c["level"] for c in shown["checks"]} == {
        "database": "ok", "schema": "ok", "sender": "ok", "auto_paused": "degraded", "unknowns": "ok",
    }  # fmt: skip

    acked = run_cli(["campaign", "ack", CAMPAIGN, "--reason", "seen"], sendguard_env)
    assert acked.returncode == 0 and "acknowledged" in acked.stdout, acked.stderr
    healthy = run_cli(["health", "--heartbeat-within", "60"], sendguard_env)
    assert healthy.returncode == 0 and healthy.stdout.splitlines()[0] == "healthy", healthy.stdout
    again = run_cli(["campaign", "ack", CAMPAIGN], sendguard_env)
    assert again.returncode == 2 and "no unacknowledged auto-pause" in again.stderr


def test_cli_rejects_bad_thresholds(tmp_path: Path) -> None:
    env = {"SENDGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "PATH": ""}
    for args in (["--heartbeat-within", "0"], ["--unknown-older-than", "-1"], ["--heartbeat-within", "x"]):
        result = run_cli(["health", *args], env)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


def test_the_unreachable_reason_is_scrubbed_even_if_the_driver_echoed_the_password() -> None:
    from sender.health import _describe

    settings = Settings(
        database_url=make_url(f"postgresql+psycopg://u:{SECRET}@h/db").render_as_string(False)
    )
    shown = _describe(RuntimeError(f"could not connect with password {SECRET}\nmore"), settings)
    assert shown == "RuntimeError: could not connect with password ***"
