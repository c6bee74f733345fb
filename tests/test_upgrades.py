"""Upgrades: from every earlier revision of the Alembic chain, with data in it, on both backends, the
upgrade to head keeps every row intact and the app works on the result; `sendguard run` refuses a schema
older or newer than it expects (exit 2, one line naming the fix).

The chain is walked generically: a new revision is covered without touching this file. The data is
inserted through whatever columns exist at the revision under test (required columns this file does not
know are filled by type), so it is "representative" of every table the protocol and the dashboard read.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    Table,
    and_,
    inspect,
    select,
    text,
)

from sender.db import make_engine
from sender.migrate import alembic_config, current_revision, head_revision, upgrade
from sender.review import list_unknown
from tests.conftest import run_cli


def chain() -> list[str]:
    """Every revision, base first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


NOW = datetime.now(UTC).replace(microsecond=0)
DAY_AGO = NOW - timedelta(days=1)
HOUR_AGO = NOW - timedelta(hours=1)


class Data:
    """Inserts rows through the columns the schema has at one revision; remembers them to compare."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.inspector = inspect(conn)
        self.tables = set(self.inspector.get_table_names())
        self.rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (table, primary key, values)

    def add(self, table_name: str, **values: Any) -> Any:
        columns = {c["name"]: c for c in self.inspector.get_columns(table_name)}
        pk = self.inspector.get_pk_constraint(table_name)["constrained_columns"]
        row = {k: v for k, v in values.items() if k in columns}
        for name, col in columns.items():
            generated = name in pk and isinstance(col["type"], Integer) and name not in row
            if name not in row and not generated and not col["nullable"] and col.get("default") is None:
                row[name] = _filler(col["type"])
        table = _table(self.conn, table_name)
        result = self.conn.execute(table.insert().values(**row))
        key = {
            name: row[name] if name in row else result.inserted_primary_key[i] for i, name in enumerate(pk)
        }
        self.rows.append((table_name, key, row))
        return key[pk[0]]


def _table(conn: Connection, name: str) -> Table:
    """The database's own table at this revision: the models' tables would add the defaults of columns
    that do not exist yet."""
    return Table(name, MetaData(), autoload_with=conn)


def _filler(type_: Any) -> Any:
    if isinstance(type_, Boolean):
        return False
    if isinstance(type_, Integer | Float | Numeric):
        return 0
    if isinstance(type_, DateTime):
        return NOW
    return "x"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        a = a if a.tzinfo else a.replace(tzinfo=UTC)
        b = b if b.tzinfo else b.replace(tzinfo=UTC)
    return a == b


def insert_representative_data(conn: Connection) -> Data:
    """A campaign mid-way: one lead sent, one queued and due, one unknown for review, one suppressed
    address; a stopped sender, a free DB-lock slot, an audit event and an imported send log."""
    d = Data(conn)
    campaign = d.add(
        "campaign", name="legacy", status="active", from_addr="Ana <ana@example.com>", reply_to=None,
        daily_limit=None, min_interval_seconds=0.0, jitter_seconds=0.0, timezone="UTC",
        created_at=DAY_AGO, updated_at=DAY_AGO,
    )  # fmt: skip
    d.add("variant", campaign_id=campaign, letter="A", weight=1, subject="Hi {{ first_name }}",
          body="Hello {{ first_name }} from {{ company }}.")  # fmt: skip
    leads = [
        d.add(
            "lead",
            email=f"old{i}@example.com",
            first_name=f"Old{i}",
            fields='{"company": "Acme"}',
            created_at=DAY_AGO,
        )  # fmt: skip
        for i in range(3)
    ]
    status = ("sent", "queued", "unknown")
    enrollments = [
        d.add(
            "campaign_lead",
            campaign_id=campaign,
            lead_id=lead,
            step=0,
            variant_letter="A",
            status=s,
            reason="lease_expired_during_transmission" if s == "unknown" else None,
            attempts=0 if s == "queued" else 1,
            next_attempt_at=HOUR_AGO,
            created_at=DAY_AGO,
            updated_at=HOUR_AGO,
        )  # fmt: skip
        for lead, s in zip(leads, status, strict=True)
    ]
    for i in (0, 2):
        d.add("send_log", campaign_id=campaign, lead_id=leads[i], enrollment_id=enrollments[i], step=0,
              variant_letter="A", status=status[i], claim_token=f"old.{i}", attempt=1,
              message_id=f"<sg.c{campaign}.l{leads[i]}.s0@example.com>", instance_id="old-instance",
              host="old-host", pid=4242, created_at=HOUR_AGO, transmit_at=HOUR_AGO,
              finished_at=HOUR_AGO if i == 0 else None, smtp_code=250 if i == 0 else None,
              smtp_reply="250 ok" if i == 0 else "lease expired during transmission")  # fmt: skip
    d.add("sender_instance", id="old-instance", host="old-host", pid=4242, version="0.0.1",
          started_at=DAY_AGO, heartbeat_at=HOUR_AGO, stopped_at=HOUR_AGO, slot=None, lock_file="/x.lock")  # fmt: skip
    d.add("sender_slot", slot=0, instance_id=None, lease_expires_at=None)
    d.add("campaign_event", campaign_id=campaign, kind="started", actor="cli:ops@old-host", reason=None,
          created_at=DAY_AGO)  # fmt: skip
    d.add("suppression", email="gone@example.com", domain=None, reason="unsubscribe", detail=None,
          created_at=DAY_AGO)  # fmt: skip
    d.add("imported_send_log", label="prisma", campaign="spring", lead="l1", email="a@example.com",
          variant="A", step=0, status="sent", sent_at=DAY_AGO)  # fmt: skip
    return d


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SENDGUARD_DATABASE_URL": url, "SENDGUARD_LOCK_FILE": str(tmp_path / "s.lock")}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database (no schema), once per backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.mark.slow
@pytest.mark.parametrize("revision", chain())
def test_upgrade_from_every_revision_keeps_the_data(revision: str, empty_url: str, tmp_path: Path) -> None:
    upgrade(empty_url, revision)
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            data = insert_representative_data(conn)
    finally:
        engine.dispose()

    upgrade(empty_url)

    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            for table_name, key, row in data.rows:
                assert table_name in tables, f"{table_name} disappeared"  # a drop needs a data step
                table = _table(conn, table_name)
                kept = [c for c in row if c in table.c]
                found = conn.execute(
                    select(*(table.c[c] for c in kept)).where(
                        and_(*(table.c[k] == v for k, v in key.items()))
                    )
                ).all()
                assert len(found) == 1, f"{table_name} {key}: {len(found)} rows after the upgrade"
                changed = {
                    c: (row[c], v) for c, v in zip(kept, found[0], strict=True) if not _same(row[c], v)
                }
                assert changed == {}, f"{table_name} {key} changed by the upgrade from {revision}"
    finally:
        engine.dispose()

    # The app on the upgraded data: status reads it, a sender sends the one due lead and only that one.
    env = _env(empty_url, tmp_path)
    before = run_cli(["status", "--json"], env)
    assert before.returncode == 0, before.stderr
    (legacy,) = [c for c in json.loads(before.stdout)["campaigns"] if c["name"] == "legacy"]
    assert {k: v for k, v in legacy["counts"].items() if v} == {"sent": 1, "queued": 1, "unknown": 1}
    out = tmp_path / "out"
    sent = run_cli(["run", "--once", "--dry-run", str(out)], env)
    assert sent.returncode == 0, sent.stderr[-2000:]
    written = list(out.glob("*.eml"))
    assert len(written) == 1 and "old1@example.com" in written[0].read_text()
    assert "Hello Old1 from Acme." in written[0].read_text()
    engine = make_engine(empty_url)
    try:  # the review queue still holds the old unknown send (in-process: one process start less)
        assert [r["email"] for r in list_unknown(engine)] == ["old2@example.com"]
    finally:
        engine.dispose()


def _run_once(url: str, tmp_path: Path):  # -> CompletedProcess
    return run_cli(["run", "--once", "--dry-run", str(tmp_path / "out")], _env(url, tmp_path))


@pytest.mark.slow
def test_run_refuses_an_older_schema(empty_url: str, tmp_path: Path) -> None:
    head = head_revision()
    result = _run_once(empty_url, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"sendguard: the database schema is empty but this sendguard expects revision {head}: "
        "run `sendguard db upgrade`"
    )
    for revision in chain()[:-1]:
        upgrade(empty_url, revision)
        result = _run_once(empty_url, tmp_path)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert f"at revision {revision}, older than this sendguard expects ({head})" in line
        assert "run `sendguard db upgrade`" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_run_and_upgrade_refuse_a_newer_schema(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    finally:
        engine.dispose()
    result = _run_once(db_url, tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "at revision 9999_from_the_future, newer than this sendguard knows" in line
    assert "upgrade sendguard" in line and "Traceback" not in result.stderr

    # `db upgrade` from the older code must not touch it either.
    refused = run_cli(["db", "upgrade"], _env(db_url, tmp_path))
    assert refused.returncode == 2 and "newer than this sendguard knows" in refused.stderr
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == "9999_from_the_future"
    finally:
        engine.dispose()


def test_downgrade_of_the_whole_chain_is_possible(db_url: str) -> None:
    """Every revision has a working downgrade (the way back if an upgrade must be undone)."""
    for revision in reversed(["base", *chain()[:-1]]):
        command.downgrade(alembic_config(db_url), revision)
        engine = make_engine(db_url)
        try:
            assert current_revision(engine) == (None if revision == "base" else revision)
        finally:
            engine.dispose()
