"""The Alembic chain builds exactly the schema models.py declares, on both backends, idempotently."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import models  # noqa: F401  (registers the tables)
from sender.db import make_engine
from sender.migrate import alembic_config, current_revision, head_revision, upgrade


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
