"""`sendguard db backup FILE`: an online, consistent copy of a SQLite database while senders run.

SQLite's online backup API (sqlite3.Connection.backup) copies every page in one step, inside one read
transaction: in WAL mode writers carry on meanwhile and the copy is the database as of one commit,
never a half-written transaction. (Copying the file with cp while a sender writes can miss the WAL or
tear pages.) The copy is written beside FILE, checked with integrity_check, switched out of WAL mode so
it is one self-contained file, fsynced, and only then renamed to FILE.

PostgreSQL has its own tools (pg_dump, base backups with WAL archiving): the command refuses it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from sender.config import redact_database_url
from sender.db import SQLITE_BUSY_TIMEOUT_MS, is_sqlite
from sender.errors import UsageError

PG_DUMP_HINT = (
    "`sendguard db backup` copies SQLite databases only; for PostgreSQL use pg_dump, e.g. "
    "`pg_dump --format=custom --file=sendguard.dump DBNAME` (restore with pg_restore)"
)


def _source_path(database_url: str) -> Path:
    if not is_sqlite(database_url):
        raise UsageError(PG_DUMP_HINT)
    name = make_url(database_url).database
    if not name or name == ":memory:":
        raise UsageError("an in-memory SQLite database has nothing to back up")
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"no SQLite database at {path}")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _counts(conn: sqlite3.Connection) -> tuple[str | None, int, int]:
    """(schema revision, enrollments, send_log rows) of a sendguard database copy."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    enrollments = (
        conn.execute("SELECT count(*) FROM campaign_lead").fetchone()[0] if "campaign_lead" in tables else 0
    )
    sends = conn.execute("SELECT count(*) FROM send_log").fetchone()[0] if "send_log" in tables else 0
    return revision, int(enrollments), int(sends)


def backup(database_url: str, dest: str, *, force: bool = False) -> str:
    """Copy the database to `dest`; returns the one-line report. UsageError for bad input."""
    source_path = _source_path(database_url)
    target = Path(dest)
    if target.exists() and target.resolve() == source_path.resolve():
        raise UsageError("the backup file cannot be the database itself")
    if target.exists() and not force:
        raise UsageError(f"{target} exists (pass --force to overwrite it)")
    if not target.parent.is_dir():
        raise UsageError(f"directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)

    source = sqlite3.connect(source_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        copy = sqlite3.connect(partial)
        try:
            # pages=-1: one step, one read transaction, so the copy is a single commit's state; in steps,
            # every write by a running sender would restart the copy.
            source.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal/-shm companions
            check = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise RuntimeError(f"integrity_check of the copy failed: {'; '.join(check[:3])}")
            revision, enrollments, sends = _counts(copy)
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    _fsync(partial)
    os.replace(partial, target)
    with contextlib.suppress(OSError):  # the rename's durability; some filesystems refuse a dir fsync
        _fsync(target.parent)
    return (
        f"backup of {redact_database_url(database_url)} written to {target}: revision {revision}, "
        f"{enrollments} enrollments, {sends} send_log rows, integrity_check ok"
    )
