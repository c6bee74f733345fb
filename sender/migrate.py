"""Schema migrations (Alembic), run by `sendguard db upgrade` and checked by `sendguard run`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from sender.db import make_engine
from sender.errors import UsageError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# The newest revision in migrations/versions, which this code's schema is (tests/test_migrations.py
# holds it equal to Alembic's head). Every CLI command checks the schema: with this constant the usual
# case costs one SELECT and no import of Alembic and the migration scripts (a quarter of a second of
# start-up, which `campaign pause` pays too). Alembic still words every mismatch.
SCHEMA_REVISION = "0006"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    engine = make_engine(url)
    try:
        current = current_revision(engine)
        if current is not None and not _known(current):
            raise UsageError(schema_problem(current) or "")  # an older sendguard must not touch it
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys(connection, on=False)
            try:
                with connection.begin():
                    config = alembic_config(url)
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    if sqlite:
                        _check_foreign_keys(connection)
            finally:
                if sqlite:
                    _sqlite_foreign_keys(connection, on=True)
    finally:
        engine.dispose()


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Batch migrations rebuild a SQLite table (copy, drop, rename): with foreign keys enforced the drop
    of a referenced table fails once it has data (SQLite's "12-step ALTER TABLE"). The pragma is a no-op
    inside a transaction, so it goes straight to the driver, outside SQLAlchemy's autobegin."""
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")  # type: ignore[union-attr]


def _check_foreign_keys(connection: Connection) -> None:
    """What enforcement would have caught, checked once before the migration commits."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(
            f"the migration left {len(broken)} rows with broken foreign keys, e.g. {broken[0]}"
        )


def _scripts() -> ScriptDirectory:
    """This code's migration chain (migrations/versions), no database needed."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _known(revision: str) -> bool:
    """Whether this code's migration chain contains `revision` (an unknown one was written by a newer
    sendguard, or by something else)."""
    script = _scripts()
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises ResolutionError/CommandError subclasses for unknown ids
        return False


def schema_problem(current: str | None) -> str | None:
    """Why a database at `current` cannot be used by this code, with the command that fixes it."""
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return f"the database schema is empty but this sendguard expects revision {head}: run `sendguard db upgrade`"
    if not _known(current):
        return (
            f"the database schema is at revision {current}, newer than this sendguard knows (it expects "
            f"{head}): upgrade sendguard to the version that migrated it; do not run an older sendguard on it"
        )
    return (
        f"the database schema is at revision {current}, older than this sendguard expects ({head}): "
        "run `sendguard db upgrade` (stop every sender first; see README, Upgrades)"
    )


def require_current_schema(engine: Engine) -> None:
    """`run` refuses a schema older or newer than this code: either would break the protocol."""
    if stored_revision(engine) == SCHEMA_REVISION:
        return
    problem = schema_problem(current_revision(engine))
    if problem is not None:
        raise UsageError(problem)


def stored_revision(engine: Engine) -> str | None:
    """The revision in alembic_version, read without Alembic; None when it cannot be read (no table
    yet, no database): Alembic's own reading then says which."""
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    except DBAPIError:
        return None
    return rows[0] if len(rows) == 1 else None  # several heads: for Alembic to explain
