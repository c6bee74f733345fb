"""scripts/pg-cluster.sh from Python, for the tools that need a throwaway PostgreSQL (bench/, chaos).

    from scripts.pg_cluster import pg_cluster, psycopg_conninfo

`pg_cluster("start")` returns the script's KEY=VALUE lines (SENDGUARD_TEST_PG_URL, SENDGUARD_TEST_PG_DIR);
`pg_cluster("stop", cluster_dir)` removes it. tests/conftest.py keeps its own copy so the suite does not
import tooling.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parent / "pg-cluster.sh"


class PgClusterError(RuntimeError):
    """scripts/pg-cluster.sh failed; the message ends with its stderr."""


def pg_cluster(action: str, *args: str) -> dict[str, str]:
    result = subprocess.run(
        ["bash", str(SCRIPT), action, *args], capture_output=True, text=True, timeout=180, check=False
    )
    if result.returncode != 0:
        raise PgClusterError(f"scripts/pg-cluster.sh {action} failed: {result.stderr.strip()[-500:]}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def psycopg_conninfo(url: str) -> str:
    """A SQLAlchemy postgresql+psycopg:// URL as a libpq conninfo the bare driver accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
