"""The Alembic chain builds exactly the schema models.py declares, on both backends, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import models  # noqa: F401  (registers the tables)
from sender.db import make_engine
from sender.migrate import SCHEMA_REVISION, alembic_config, current_revision, head_revision, upgrade


def test_migrations_match_the_models_and_are_idempotent(db_url: str) -> None:
    upgrade(db_url)  # a second upgrade changes nothing
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("send_log")}
        live = indexes["uq_send_log_live"]
        assert live["unique"] and live["column_names"] == ["campaign_id", "lead_id", "step"]
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    config = alembic_config(db_url)
    command.downgrade(config, "base")
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert "send_log" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_schema_revision_constant_is_alembics_head() -> None:
    """The CLI's quick schema check compares with SCHEMA_REVISION: a new migration must move it."""
    assert SCHEMA_REVISION == head_revision()


def test_a_command_on_a_current_schema_never_loads_alembic(db_url: str) -> None:
    """The schema check's usual case is one SELECT: Alembic and the migration scripts load only to word
    a mismatch (tests/test_upgrades.py holds those messages)."""
    upgrade(db_url)
    env = {**os.environ, "SENDGUARD_DATABASE_URL": db_url}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sender", "campaign", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "sender.campaigns" in imported  # the command ran and `-X importtime` reported
    assert not [name for name in imported if name.split(".")[0] == "alembic"]
