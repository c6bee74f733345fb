"""The PostgreSQL fixtures give a real, working, empty, per-test database."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, text


def test_pg_url_is_a_working_empty_database(pg_url: str, request: pytest.FixtureRequest) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    assert request.node.get_closest_marker("postgres") is not None
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'x')")
        assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone() == ("x",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_pg_url_is_fresh_per_test(pg_url: str) -> None:
    # The table created by the previous test lives in another database.
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('public.t')")).scalar() is None
    finally:
        engine.dispose()


def test_db_url_connects(db_url: str, request: pytest.FixtureRequest) -> None:
    is_pg = db_url.startswith("postgresql")
    assert (request.node.get_closest_marker("postgres") is not None) == is_pg
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
