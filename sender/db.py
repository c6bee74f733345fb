"""Engines for both backends, configured for the claim protocol's needs.

SQLite: pysqlite's own implicit (deferred) BEGIN is switched off and every transaction starts with
BEGIN IMMEDIATE, because in WAL mode a deferred read-then-write fails with SQLITE_BUSY at once,
whatever the busy timeout (DESIGN.md, Pitfalls). synchronous=FULL so the `transmitting` mark is on
disk before the first byte of DATA leaves; SENDGUARD_SQLITE_SYNCHRONOUS=NORMAL is the documented
opt-out.
PostgreSQL: psycopg 3, TCP keepalives so a dead peer is noticed, synchronous_commit left on.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Readers (dashboard, reports, status) on PostgreSQL: the reports' correlated lookups make the planner's
# cost estimates huge, which switches JIT compilation on, and compiling cost ~1.1 s of a 1.2 s report
# at a million send_log rows for a query that runs in 80 ms. A SET on connect rather than the `options`
# startup parameter, which PgBouncer refuses.
READER_SESSION_SQL: tuple[str, ...] = ("SET jit = off",)
_SYNCHRONOUS_MODES = {"FULL": "FULL", "NORMAL": "NORMAL", "EXTRA": "EXTRA"}


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str, *, readonly: bool = False, pool_size: int = 5) -> Engine:
    """`readonly` engines (dashboard, status) begin deferred so they never queue behind the writer."""
    if is_sqlite(url):
        return _sqlite_engine(url, readonly=readonly)
    connect_args: dict[str, Any] = {
        "application_name": "sendguard",
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=2, connect_args=connect_args
    )
    if readonly:

        @event.listens_for(engine, "connect")
        def _reader_session(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                for statement in READER_SESSION_SQL:
                    cursor.execute(statement)
            dbapi_connection.commit()

    return engine


def _sqlite_engine(url: str, *, readonly: bool) -> Engine:
    # PRAGMA takes no bound parameters: pick one of our own constants, never paste the environment in
    # (tests/test_security.py checks SQL text statically); anything unknown means the safe FULL.
    synchronous = _SYNCHRONOUS_MODES.get(os.environ.get("SENDGUARD_SQLITE_SYNCHRONOUS", "").upper(), "FULL")
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # On the driver's connection (exec_driver_sql's execution context costs more than the BEGIN
        # itself, once per message); errors go through SQLAlchemy's handler as they would there.
        try:
            conn.connection.dbapi_connection.execute(begin)
        except BaseException as exc:
            conn._handle_dbapi_exception(exc, begin, (), None, None)

    return engine
