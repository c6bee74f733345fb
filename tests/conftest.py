"""Shared pytest fixtures for sendguard.

Sections:
  1. plugins and paths
  2. PostgreSQL: pg_admin_url (session), pg_url (fresh database per test)
  3. databases: sqlite_url, db_url (parametrized sqlite/postgresql), prepare_database hook
  4. subprocess CLI: sendguard_env, run_cli / cli

PostgreSQL: set SENDGUARD_TEST_PG_URL to an admin URL (``make test`` / scripts/with-postgres.sh do),
or let pg_admin_url start a throwaway cluster itself (scripts/pg-cluster.sh) when PostgreSQL binaries
exist. Without either, PostgreSQL tests skip loudly, or FAIL when CI or SENDGUARD_REQUIRE_PG is set.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------------
# 1. plugins and paths
# --------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
# `tests.*` modules must import whether pytest runs as `.venv/bin/pytest` or `python -m pytest`.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.smtp_peer"]

PG_CLUSTER_SCRIPT = ROOT / "scripts" / "pg-cluster.sh"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _pg_required() -> bool:
    """In CI (or when asked), PostgreSQL tests must run: never skip them silently."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("SENDGUARD_REQUIRE_PG"))


# --------------------------------------------------------------------------------------------------
# 2. PostgreSQL
# --------------------------------------------------------------------------------------------------


def _pg_bindir() -> str | None:
    result = subprocess.run(
        ["bash", str(PG_CLUSTER_SCRIPT), "bindir"], capture_output=True, text=True, check=False
    )
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _start_cluster() -> tuple[str, str]:
    """Start a throwaway cluster via scripts/pg-cluster.sh; returns (admin_url, cluster_dir)."""
    result = subprocess.run(
        ["bash", str(PG_CLUSTER_SCRIPT), "start"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/pg-cluster.sh start failed:\n{result.stderr}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return values["SENDGUARD_TEST_PG_URL"], values["SENDGUARD_TEST_PG_DIR"]


def _stop_cluster(cluster_dir: str) -> None:
    subprocess.run(
        ["bash", str(PG_CLUSTER_SCRIPT), "stop", cluster_dir], capture_output=True, timeout=120, check=False
    )


def _psycopg_conninfo(sqlalchemy_url: str, database: str | None = None) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy) -> `postgresql://...` (libpq), optionally another db."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL superuser connection to the `postgres` database."""
    url = os.environ.get("SENDGUARD_TEST_PG_URL")
    if url:
        yield url
        return
    if _pg_bindir() is None:
        if _pg_required():
            pytest.fail(
                "PostgreSQL binaries not found, and CI or SENDGUARD_REQUIRE_PG is set: PostgreSQL tests "
                "must run here; install postgresql or set SENDGUARD_TEST_PG_URL",
                pytrace=False,
            )
        pytest.skip(
            "!!! PostgreSQL binaries not found: PostgreSQL tests skipped; install postgresql to run them "
            "(or set SENDGUARD_TEST_PG_URL) !!!"
        )
    url, cluster_dir = _start_cluster()
    atexit.register(_stop_cluster, cluster_dir)  # safety net if the session dies before teardown
    try:
        yield url
    finally:
        _stop_cluster(cluster_dir)


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (`postgresql+psycopg://` URL); dropped after."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"sg_{uuid.uuid4().hex[:16]}"
    admin = _psycopg_conninfo(pg_admin_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------------
# 3. databases
# --------------------------------------------------------------------------------------------------


def prepare_database(url: str) -> None:
    """Every db_url is a migrated, empty sendguard database (as `sendguard db upgrade` leaves it)."""
    from sender.migrate import upgrade

    upgrade(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sendguard.db"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty database, once per backend (the postgresql param is marked `postgres`)."""
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    prepare_database(url)
    return url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Any test that uses PostgreSQL directly is a `postgres` test too (select with -m postgres).
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("pg_url" in names or "pg_admin_url" in names) and item.get_closest_marker("postgres") is None:
            callspec = getattr(item, "callspec", None)
            if callspec is not None and callspec.params.get("db_url") == "sqlite":
                continue  # pg_url is only in the closure because db_url may request it
            item.add_marker(pytest.mark.postgres)


# --------------------------------------------------------------------------------------------------
# 4. subprocess CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def sendguard_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for `sendguard` subprocesses: this test's database, its own lock file."""
    env = dict(os.environ)
    env["SENDGUARD_DATABASE_URL"] = db_url
    env["SENDGUARD_LOCK_FILE"] = str(tmp_path / "sender.lock")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    args: list[str],
    env: dict[str, str],
    timeout: float = 60,
    *,
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m sender ARGS` and capture its text output (no check: assert on returncode)."""
    return subprocess.run(
        [sys.executable, "-m", "sender", *args],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli():
    """The run_cli helper: `cli(["status", "--json"], sendguard_env)`."""
    return run_cli
