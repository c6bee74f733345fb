"""`sendguard demo` (sender/demo.py): the seeded world is what it claims, consistent, idempotent, and
the real sender treats it as real data (sends the welcome-series queue, leaves the paused campaign)."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from sender.db import make_engine
from sender.demo import DEMO_CAMPAIGNS, seed_demo
from sender.message import message_id

# The seed is deterministic (random.Random(42)): these are exact.
EXPECTED = {
    "welcome-series": ("active", {"queued": 200}),
    "spring-outreach": ("active", {"sent": 2469, "failed": 5, "skipped": 3, "unknown": 3}),
    "q4-newsletter": ("paused", {"queued": 295, "sent": 15}),
    "draft-ideas": ("draft", {"queued": 6}),
}
STATES = ("queued", "sending", "sent", "failed", "skipped", "unknown")
TABLES = ("campaign", "variant", "lead", "campaign_lead", "send_log", "sender_instance", "campaign_event",
          "suppression")  # fmt: skip


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _status(cli: Any, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = cli(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)["campaigns"]}


def _expected_counts(name: str) -> dict[str, int]:
    return {state: EXPECTED[name][1].get(state, 0) for state in STATES}


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def _table_counts(engine: Engine) -> dict[str, int]:
    return {t: _scalar(engine, f"SELECT count(*) FROM {t}") for t in TABLES}  # noqa: S608 (fixed names)


def test_demo_seeds_the_documented_world(
    db_url: str, sendguard_env: dict[str, str], cli: Any, engine: Engine
) -> None:
    result = cli(["demo"], sendguard_env, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in DEMO_CAMPAIGNS:
        assert name in result.stdout

    campaigns = _status(cli, sendguard_env)
    assert set(campaigns) == set(DEMO_CAMPAIGNS)
    for name, (status, _) in EXPECTED.items():
        assert campaigns[name]["status"] == status, name
        assert campaigns[name]["counts"] == _expected_counts(name), name

    # spring-outreach: ~2,500 attempts over the past three days by four stopped sender instances.
    spring_rows = _scalar(
        engine, "SELECT count(*) FROM send_log AS s JOIN campaign AS c ON c.id = s.campaign_id "
        "WHERE c.name = 'spring-outreach'"
    )  # fmt: skip
    assert 2400 <= spring_rows <= 2600
    with engine.connect() as conn:
        by_status = dict(conn.execute(text("SELECT status, count(*) FROM send_log GROUP BY status")).all())
        instances = conn.execute(
            text("SELECT host, pid, started_at, heartbeat_at, stopped_at FROM sender_instance")
        ).all()
        events = conn.execute(
            text(
                "SELECT c.name, e.kind, e.actor, e.lead_id, e.instance_id FROM campaign_event AS e "
                "JOIN campaign AS c ON c.id = e.campaign_id ORDER BY e.id"
            )
        ).all()
        suppressions = dict(
            conn.execute(text("SELECT reason, count(*) FROM suppression GROUP BY reason")).all()
        )
        q4 = conn.execute(
            text("SELECT pause_reason, paused_by, paused_at FROM campaign WHERE name = 'q4-newsletter'")
        ).one()
        variants = dict(
            conn.execute(
                text(
                    "SELECT v.letter, v.weight FROM variant AS v JOIN campaign AS c ON c.id = v.campaign_id "
                    "WHERE c.name = 'welcome-series'"
                )
            ).all()
        )
        welcome_domains = set(
            conn.execute(
                text(
                    "SELECT DISTINCT substr(l.email, instr(l.email, '@') + 1) FROM campaign_lead AS cl "
                    "JOIN lead AS l ON l.id = cl.lead_id JOIN campaign AS c ON c.id = cl.campaign_id "
                    "WHERE c.name = 'welcome-series'"
                )
                if engine.dialect.name == "sqlite"
                else text(
                    "SELECT DISTINCT split_part(l.email, '@', 2) FROM campaign_lead AS cl "
                    "JOIN lead AS l ON l.id = cl.lead_id JOIN campaign AS c ON c.id = cl.campaign_id "
                    "WHERE c.name = 'welcome-series'"
                )
            ).scalars()
        )
    assert by_status["sent"] >= 2400 and by_status["deferred"] > 0
    assert 1 <= by_status.get("failed", 0) <= 10 and 2 <= by_status["unknown"] <= 3
    assert "reserved" not in by_status and "transmitting" not in by_status
    assert len(instances) == 4 and all(i.stopped_at is not None for i in instances)
    assert {i.host for i in instances} <= {"mail-1", "mail-2"} and len({i.pid for i in instances}) == 4
    assert [(e.name, e.kind) for e in events if e.kind != "duplicate_prevented"] == [
        ("spring-outreach", "started"),
        ("q4-newsletter", "started"),
        ("q4-newsletter", "paused"),
        ("welcome-series", "started"),
    ]
    guards = [e for e in events if e.kind == "duplicate_prevented"]
    assert len(guards) == 1 and guards[0].lead_id is not None and guards[0].instance_id is not None
    assert suppressions.get("unsubscribe", 0) >= 1 and suppressions.get("hard_bounce", 0) >= 1
    assert q4.pause_reason and q4.paused_by and q4.paused_at is not None
    assert variants == {"A": 3, "B": 1}
    assert welcome_domains == {"example.com", "example.org"}


def test_demo_history_is_consistent(db_url: str, engine: Engine) -> None:
    seed_demo(db_url)
    checks = {
        # reserved <= transmit <= finished, on every attempt
        "times out of order": "SELECT count(*) FROM send_log WHERE transmit_at < created_at "
        "OR finished_at < transmit_at OR finished_at IS NULL OR transmit_at IS NULL",
        # every attempt by a sender instance that was running at that moment
        "attempt outside its sender's lifetime": "SELECT count(*) FROM send_log AS s "
        "LEFT JOIN sender_instance AS i ON i.id = s.instance_id "
        "WHERE i.id IS NULL OR s.created_at < i.started_at OR s.finished_at > i.stopped_at "
        "OR s.host <> i.host OR s.pid <> i.pid",
        "instance times out of order": "SELECT count(*) FROM sender_instance "
        "WHERE heartbeat_at < started_at OR stopped_at < heartbeat_at",
        # at most one live attempt per key (the partial unique index), and sent enrollments have theirs
        "live duplicates": "SELECT count(*) FROM (SELECT campaign_id, lead_id, step FROM send_log "
        "WHERE status IN ('reserved', 'transmitting', 'sent', 'unknown') "
        "GROUP BY campaign_id, lead_id, step HAVING count(*) > 1) AS d",
        "sent enrollment without its sent attempt": "SELECT count(*) FROM campaign_lead AS cl "
        "WHERE cl.status = 'sent' AND NOT EXISTS (SELECT 1 FROM send_log AS s "
        "WHERE s.enrollment_id = cl.id AND s.status = 'sent' AND s.claim_token = cl.claim_token)",
        "attempt count mismatch": "SELECT count(*) FROM campaign_lead AS cl "
        "WHERE cl.status IN ('sent', 'failed', 'unknown') "
        "AND cl.attempts <> (SELECT count(*) FROM send_log AS s WHERE s.enrollment_id = cl.id)",
        "enrollment updated before its last attempt ended": "SELECT count(*) FROM campaign_lead AS cl "
        "WHERE cl.updated_at < (SELECT max(s.finished_at) FROM send_log AS s WHERE s.enrollment_id = cl.id)",
        "lead attempted before enrollment": "SELECT count(*) FROM send_log AS s "
        "JOIN campaign_lead AS cl ON cl.id = s.enrollment_id WHERE s.created_at < cl.created_at",
        "claims left behind": "SELECT count(*) FROM campaign_lead WHERE status = 'sending' "
        "OR lease_expires_at IS NOT NULL",
        "hard bounce not suppressed": "SELECT count(*) FROM campaign_lead AS cl JOIN lead AS l "
        "ON l.id = cl.lead_id WHERE cl.reason = 'hard_bounce' "
        "AND NOT EXISTS (SELECT 1 FROM suppression AS su WHERE su.email = l.email)",
        "sent to a suppressed address": "SELECT count(*) FROM send_log AS s JOIN lead AS l ON l.id = s.lead_id "
        "JOIN suppression AS su ON su.email = l.email WHERE su.created_at < s.created_at",
        "attempt after its campaign was paused": "SELECT count(*) FROM send_log AS s "
        "JOIN campaign AS c ON c.id = s.campaign_id WHERE c.paused_at IS NOT NULL AND s.created_at > c.paused_at",
    }
    for what, sql in checks.items():
        assert _scalar(engine, sql) == 0, what
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.campaign_id, s.lead_id, s.step, s.message_id, c.from_addr FROM send_log AS s "
                "JOIN campaign AS c ON c.id = s.campaign_id"
            )
        ).all()
        start, end = conn.execute(text("SELECT min(created_at), max(finished_at) FROM send_log")).one()
    assert all(r.message_id == message_id(r.campaign_id, r.lead_id, r.step, r.from_addr) for r in rows)
    assert start is not None and end is not None


def test_second_seed_changes_nothing(db_url: str, engine: Engine) -> None:
    seed_demo(db_url)
    before = _table_counts(engine)
    message = seed_demo(db_url)
    assert "already" in message and "nothing changed" in message
    assert _table_counts(engine) == before


def test_partial_unique_index_holds_on_demo_data(db_url: str, engine: Engine) -> None:
    seed_demo(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT campaign_id, lead_id, enrollment_id, step, variant_letter, message_id, instance_id, "
                "host, pid, created_at FROM send_log WHERE status = 'sent' ORDER BY id LIMIT 1"
            )
        ).one()
    insert = text(
        "INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status, claim_token, "
        "attempt, message_id, instance_id, host, pid, created_at) VALUES (:campaign_id, :lead_id, "
        ":enrollment_id, :step, :variant, :status, 'test-token', 9, :message_id, :instance_id, :host, :pid, "
        ":created_at)"
    )
    params = dict(row._mapping)
    params["variant"] = "B" if params.pop("variant_letter") == "A" else "A"  # another variant: still blocked
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(insert, {**params, "status": "reserved"})
    with engine.begin() as conn:  # a non-live attempt (deferred) is outside the index
        conn.execute(insert, {**params, "status": "deferred"})


@pytest.mark.slow
def test_run_until_idle_sends_the_welcome_queue_only(
    db_url: str, sendguard_env: dict[str, str], cli: Any, tmp_path: Path
) -> None:
    assert cli(["demo"], sendguard_env, timeout=120).returncode == 0
    before = _status(cli, sendguard_env)
    out = tmp_path / "dry-run"
    result = cli(
        ["run", "--until-idle", "--interval", "0.5", "--dry-run", str(out)], sendguard_env, timeout=180
    )
    assert result.returncode == 0, result.stderr

    after = _status(cli, sendguard_env)
    assert after["welcome-series"]["counts"] == {
        **_expected_counts("welcome-series"),
        "queued": 0,
        "sent": 200,
    }
    for name in ("spring-outreach", "q4-newsletter", "draft-ideas"):
        assert after[name] == before[name], name

    files = sorted(out.glob("*.eml"))
    assert len(files) == 200
    recipients = set()
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert msg["X-Sendguard-Campaign"] == "welcome-series"
        subject = str(msg["Subject"])
        assert subject.startswith("Welcome to Example, ") or subject.endswith(
            ", your Example account is ready"
        )
        recipients.add(str(msg["Delivered-To"]))
    assert len(recipients) == 200
    assert all(r.endswith(("@example.com", "@example.org")) for r in recipients)


def test_seed_migrates_an_empty_database_and_is_deterministic(tmp_path: Path) -> None:
    fingerprints = []
    for name in ("one", "two"):
        url = f"sqlite:///{tmp_path}/{name}.db"  # not migrated: seed_demo runs the migrations itself
        seed_demo(url)
        eng = make_engine(url)
        try:
            with eng.connect() as conn:
                fingerprints.append(
                    conn.execute(
                        text(
                            "SELECT l.email, cl.status, cl.reason, cl.variant_letter, cl.attempts, "
                            "(SELECT count(*) FROM send_log AS s WHERE s.enrollment_id = cl.id) "
                            "FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id ORDER BY cl.id"
                        )
                    ).all()
                )
        finally:
            eng.dispose()
    assert fingerprints[0] == fingerprints[1]
    assert len(fingerprints[0]) == sum(sum(c.values()) for _, c in EXPECTED.values())


def test_fresh_adds_a_second_set(sqlite_url: str) -> None:
    seed_demo(sqlite_url)
    message = seed_demo(sqlite_url, fresh=True)
    assert "welcome-series-2" in message
    eng = make_engine(sqlite_url)
    try:
        with eng.connect() as conn:
            names = set(conn.execute(text("SELECT name FROM campaign")).scalars())
            enrolled = conn.execute(text("SELECT count(*) FROM campaign_lead")).scalar_one()
    finally:
        eng.dispose()
    assert names == set(DEMO_CAMPAIGNS) | {f"{n}-2" for n in DEMO_CAMPAIGNS}
    assert enrolled == 2 * sum(sum(c.values()) for _, c in EXPECTED.values())
