"""The hot path's statements use the indexes meant for them, on both backends (EXPLAIN, not timing).

The database holds a realistic shape before the plans are taken: thousands of enrollments of one
campaign, almost all already sent (the queue is the small tail of a big table, as in production), with
a send_log row each, then ANALYZE, so each planner sees statistics like a live database's.
PostgreSQL plans are taken with the planner's default settings (enable_seqscan stays on): with
statistics in place a sequential scan of these tables would be a real plan, and that is what must not
happen. SQLite: EXPLAIN QUERY PLAN; `SCAN t` is a full scan, `SEARCH t USING ...` an index lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, TextClause, insert, text

from models import CampaignLead, Lead, SendLog
from sender import claim as q
from sender.db import make_engine

LEADS = 6000
QUEUED = 150
SENDING = 50
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

CAMPAIGN_TOML = """name = "plans"
from = "Ana <ana@example.com>"
[[variants]]
letter = "A"
weight = 1
subject = "Hello"
body = "Hi there."
"""


def _seed(engine: Engine, tmp_path: Path) -> int:
    from sender import campaigns
    from sender.campaign_file import load_campaign_file

    path = tmp_path / "plans.toml"
    path.write_text(CAMPAIGN_TOML, encoding="utf-8")
    campaigns.create_or_update(engine, load_campaign_file(path), update_existing=False, now=NOW)
    with engine.begin() as conn:
        campaign_id = conn.execute(text("SELECT id FROM campaign WHERE name = 'plans'")).scalar_one()
        conn.execute(
            insert(Lead.__table__),
            [{"email": f"l{i}@example.com", "fields": "{}", "created_at": NOW} for i in range(LEADS)],
        )
        lead_ids = [r[0] for r in conn.execute(text("SELECT id FROM lead ORDER BY id"))]
        sent = LEADS - QUEUED - SENDING
        rows = []
        for n, lead_id in enumerate(lead_ids):
            status = "sent" if n < sent else "sending" if n < sent + SENDING else "queued"
            rows.append(
                {
                    "campaign_id": campaign_id,
                    "lead_id": lead_id,
                    "step": 0,
                    "variant_letter": "A",
                    "status": status,
                    "attempts": 0 if status == "queued" else 1,
                    "claim_token": None if status == "queued" else f"tok.{n}",
                    "claimed_by": None if status == "queued" else "inst",
                    "lease_expires_at": NOW + timedelta(minutes=5) if status == "sending" else None,
                    "next_attempt_at": NOW - timedelta(seconds=n),
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            )
        conn.execute(insert(CampaignLead.__table__), rows)
        enrollments = conn.execute(
            text("SELECT id, lead_id, status, claim_token FROM campaign_lead WHERE status <> 'queued'")
        ).all()
        conn.execute(
            insert(SendLog.__table__),
            [
                {
                    "campaign_id": campaign_id,
                    "lead_id": lead_id,
                    "enrollment_id": enrollment_id,
                    "step": 0,
                    "variant_letter": "A",
                    "status": "sent" if status == "sent" else "transmitting",
                    "claim_token": token,
                    "attempt": 1,
                    "message_id": f"<sg.c{campaign_id}.l{lead_id}.s0@example.com>",
                    "instance_id": "inst",
                    "host": "h",
                    "pid": 1,
                    "created_at": NOW - timedelta(seconds=enrollment_id),
                }
                for enrollment_id, lead_id, status, token in enrollments
            ],
        )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return int(campaign_id)


@pytest.fixture
def planned(db_url: str, tmp_path: Path) -> tuple[Engine, int]:
    engine = make_engine(db_url)
    try:
        yield engine, _seed(engine, tmp_path)
    finally:
        engine.dispose()


def explain(conn: Connection, stmt: TextClause, params: dict[str, object]) -> str:
    """The plan of `stmt` with these parameters, as one string, without running it."""
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
    stmt_text = stmt.text
    explained = text(prefix + stmt_text).bindparams(*stmt._bindparams.values())
    rows = conn.execute(explained, params).all()
    return "\n".join(str(r[-1]) for r in rows)


def full_scans(plan: str, dialect: str, table: str, alias: str | None = None) -> bool:
    names = {table, alias} - {None}
    if dialect == "sqlite":
        return any(f"SCAN {n}" in line.split(" USING")[0] for line in plan.splitlines() for n in names)
    return f"Seq Scan on {table}" in plan


def uses(plan: str, dialect: str, index: str) -> bool:
    if dialect == "sqlite":
        return f"INDEX {index}" in plan
    return (
        f"Index Scan using {index}" in plan
        or f"Index Only Scan using {index}" in plan
        or (f"Bitmap Index Scan on {index}" in plan)
    )


def searched(plan: str, dialect: str, table: str, alias: str | None = None) -> bool:
    """The table is reached through some index (which one is the planner's choice among equals)."""
    names = {table, alias} - {None}
    if dialect == "sqlite":
        return any(f"SEARCH {n} USING" in plan for n in names)
    return (
        any(re.search(rf"(Index Scan|Index Only Scan) using \w+ on {table}( {n})?\b", plan) for n in names)
        or f"Bitmap Heap Scan on {table}" in plan
    )


def by_primary_key(plan: str, dialect: str, table: str, alias: str | None = None) -> bool:
    if dialect == "sqlite":
        return any(f"SEARCH {n} USING INTEGER PRIMARY KEY" in plan for n in ({table, alias} - {None}))
    return f"using {table}_pkey on {table}" in plan


def claim_plan(engine: Engine, campaign_id: int) -> str:
    """The claim's plan on the planner's current statistics."""
    stmt = q._CLAIM_SQLITE if engine.dialect.name == "sqlite" else q._CLAIM_POSTGRESQL
    params = {"campaign_id": campaign_id, "limit": 4, "token_prefix": "t.", "instance": "i", "now": NOW,
              "lease_until": NOW + timedelta(minutes=5)}  # fmt: skip
    with engine.connect() as conn:
        return explain(conn, stmt, params)


def enrolled_at_once(engine: Engine, *statements: str) -> None:
    """Give every queued enrollment the same `next_attempt_at` (a list enrolled in one go), run
    `statements`, then refresh the planner's statistics."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE campaign_lead SET next_attempt_at = :t WHERE status = 'queued'"), {"t": NOW}
        )
        for statement in statements:
            conn.execute(text(statement))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def sorts(plan: str, dialect: str) -> bool:
    return "TEMP B-TREE" in plan if dialect == "sqlite" else "Sort" in plan


def test_claim_reads_the_queue_through_its_index(planned: tuple[Engine, int]) -> None:
    engine, campaign_id = planned
    dialect = engine.dialect.name
    plan = claim_plan(engine, campaign_id)
    assert uses(plan, dialect, "ix_campaign_lead_queue"), plan
    assert not full_scans(plan, dialect, "campaign_lead", "q"), plan
    # The picked rows are then updated by primary key. (The one-row campaign table may well be scanned:
    # for a table that small a scan is the best plan.)
    assert by_primary_key(plan, dialect, "campaign_lead"), plan


def test_claim_takes_a_list_enrolled_at_once_in_index_order_without_sorting_it(
    planned: tuple[Engine, int],
) -> None:
    """A list enrolled in one go shares one `next_attempt_at`: the claim's order among those equals
    (by id) must come from the index too, or every claim sorts the campaign's whole queue."""
    engine, campaign_id = planned
    dialect = engine.dialect.name
    enrolled_at_once(engine)
    plan = claim_plan(engine, campaign_id)
    assert uses(plan, dialect, "ix_campaign_lead_queue"), plan
    assert not full_scans(plan, dialect, "campaign_lead", "q"), plan
    assert not sorts(plan, dialect), plan


def test_the_claim_order_check_notices_an_index_without_id(planned: tuple[Engine, int]) -> None:
    """Migration 0004's index (no `id`): on PostgreSQL the ties force a sort of the queue, and the check
    above says so. (SQLite indexes end in the rowid, which `id` is: it never needed the column.)"""
    engine, campaign_id = planned
    enrolled_at_once(
        engine,
        "DROP INDEX ix_campaign_lead_queue",
        "CREATE INDEX ix_campaign_lead_claim ON campaign_lead (campaign_id, status, next_attempt_at)",
    )
    plan = claim_plan(engine, campaign_id)
    assert sorts(plan, engine.dialect.name) == (engine.dialect.name == "postgresql"), plan


def test_gate_reaches_send_log_and_the_queue_through_indexes_only(planned: tuple[Engine, int]) -> None:
    engine, campaign_id = planned
    dialect = engine.dialect.name
    params = {"send_id": 10, "token": "tok.9", "enrollment_id": 10, "campaign_id": campaign_id, "now": NOW}
    with engine.connect() as conn:
        plan = explain(conn, q._GATE_BY_DIALECT[dialect], params)
    assert searched(plan, dialect, "send_log"), plan
    assert searched(plan, dialect, "campaign_lead", "cl"), plan
    assert not full_scans(plan, dialect, "send_log"), plan
    assert not full_scans(plan, dialect, "campaign_lead", "cl"), plan


def test_record_reaches_both_rows_through_indexes(planned: tuple[Engine, int]) -> None:
    engine, _ = planned
    dialect = engine.dialect.name
    with engine.connect() as conn:
        send = explain(conn, q._RECORD_SEND, {"send_status": "sent", "now": NOW, "code": 250, "reply": "ok",
                                               "send_id": 10, "token": "tok.9"})  # fmt: skip
        enrollment = explain(conn, q._RECORD_ENROLLMENT, {"status": "sent", "reason": None, "error": None,
                             "next_at": NOW, "now": NOW, "enrollment_id": 10, "token": "tok.9"})  # fmt: skip
    assert searched(send, dialect, "send_log") and not full_scans(send, dialect, "send_log"), send
    if dialect == "postgresql":  # the one-statement form PostgreSQL runs
        with engine.connect() as conn:
            both = explain(conn, q._RECORD_BOTH_POSTGRESQL, {"send_status": "sent", "now": NOW, "code": 250,
                           "reply": "ok", "send_id": 10, "token": "tok.9", "status": "sent", "reason": None,
                           "error": None, "next_at": NOW, "enrollment_id": 10})  # fmt: skip
        assert not full_scans(both, dialect, "send_log"), both
        assert not full_scans(both, dialect, "campaign_lead"), both
    assert searched(enrollment, dialect, "campaign_lead"), enrollment
    assert not full_scans(enrollment, dialect, "campaign_lead"), enrollment


def test_release_and_reaper_find_their_rows_through_indexes(planned: tuple[Engine, int]) -> None:
    engine, campaign_id = planned
    dialect = engine.dialect.name
    with engine.connect() as conn:
        drop = explain(conn, q._DROP_RESERVATION, {"token": "tok.9"})
        expired = explain(conn, q._EXPIRED, {"now": NOW, "limit": 200})
        reap = explain(conn, q._REAP_TRANSMITTING, {"token": "tok.9", "now": NOW})
        daily = explain(conn, q._SENDS_SINCE, {"campaign_id": campaign_id, "day_start": NOW})
    assert uses(drop, dialect, "ix_send_log_claim") and not full_scans(drop, dialect, "send_log"), drop
    assert uses(expired, dialect, "ix_campaign_lead_lease"), expired
    assert not full_scans(expired, dialect, "campaign_lead"), expired
    assert uses(reap, dialect, "ix_send_log_claim") and not full_scans(reap, dialect, "send_log"), reap
    assert not full_scans(daily, dialect, "send_log"), daily


def test_the_checks_notice_a_missing_index(planned: tuple[Engine, int]) -> None:
    """Without ix_send_log_claim, releasing a reservation scans send_log, and the check above says so."""
    engine, _ = planned
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_send_log_claim"))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
        drop = explain(conn, q._DROP_RESERVATION, {"token": "tok.9"})
    assert not uses(drop, dialect, "ix_send_log_claim"), drop
    assert full_scans(drop, dialect, "send_log"), drop


# --- the Duplicates reports on an imported log (migration 0004's partial indexes) ----------------

IMPORTED_ROWS = 4000


@pytest.fixture
def imported(db_url: str) -> Iterator[Engine]:
    """A 4,000-row imported log (as `sendguard sendlog import` stores it, statistics included) with a
    handful of each kind of duplicate: repeated keys, an address shared by two lead records, an address
    reached by two campaigns."""
    from sender.sendlog_import import import_sendlog

    lines = ["campaign,lead,email,variant,status,sent_at"]
    for i in range(IMPORTED_ROWS - 12):
        lines.append(f"c{i % 8},l{i},u{i}@example.com,{'AB'[i % 2]},sent,2024-03-12T{10 + i // 3600:02d}:"
                     f"{i // 60 % 60:02d}:{i % 60:02d}Z")  # fmt: skip
    for i in range(4):
        lines.append(f"c{i % 8},l{i},u{i}@example.com,B,sent,2024-03-13T10:00:0{i}Z")  # repeated key
        lines.append(f"c{i % 8},x{i},U{i}@Example.com,A,sent,2024-03-13T11:00:0{i}Z")  # shared address
        lines.append(f"c{(i + 1) % 8},l{i},u{i}@example.com,A,sent,2024-03-13T12:00:0{i}Z")  # other campaign
    engine = make_engine(db_url)
    try:
        result = import_sendlog(engine, "\n".join(lines).encode(), label="plans", source="plans.csv")
        assert result["imported"] == IMPORTED_ROWS
        yield engine
    finally:
        engine.dispose()


def _imported_plan(engine: Engine, template: str, kind: str | None = None) -> str:
    import reports

    source = reports.Source.imported("plans")
    if kind is None:
        sql = template.format(**reports._fragments(engine, source, None))
    else:
        sql = reports._details_sql(engine, source, kind, None, reports.ALL_TIME)
    with engine.connect() as conn:
        return explain(conn, text(sql), reports._params(source, None, limit=500, max_rows=10_001))


def test_imported_address_and_cross_campaign_reports_read_only_their_flagged_rows(imported: Engine) -> None:
    """No grouping of the whole log per page load: the address and cross-campaign statements reach the
    imported log only through their partial indexes (the rows flagged at import)."""
    import reports

    engine, dialect = imported, imported.dialect.name
    for template, kind, index in (
        (reports._ADDRESS, None, "ix_imported_shared"),
        (None, "address", "ix_imported_shared"),
        (reports._CROSS_CAMPAIGN, None, "ix_imported_multi_campaign"),
        (None, "cross_campaign", "ix_imported_multi_campaign"),
    ):
        plan = _imported_plan(engine, template or "", kind)
        assert uses(plan, dialect, index), plan
        assert not full_scans(plan, dialect, "imported_send_log", "i"), plan


def test_imported_key_windows_read_only_repeated_keys(imported: Engine) -> None:
    """The copy numbering (buckets, per-instance attribution, drill-down) windows over the rows of keys
    flagged as repeated, through ix_imported_repeats; only the per-bucket totals read every send."""
    import reports

    engine, dialect = imported, imported.dialect.name
    for template, kind in ((reports._DUPLICATE_BUCKETS, None), (reports._BY_INSTANCE, None), (None, "any")):
        plan = _imported_plan(engine, template or "", kind)
        assert uses(plan, dialect, "ix_imported_repeats"), plan
    details = _imported_plan(engine, "", "any")
    assert not full_scans(details, dialect, "imported_send_log", "i"), details


def test_the_imported_checks_notice_a_missing_partial_index(imported: Engine) -> None:
    import reports

    engine, dialect = imported, imported.dialect.name
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_imported_shared"))
    plan = _imported_plan(engine, reports._ADDRESS)
    assert not uses(plan, dialect, "ix_imported_shared"), plan
