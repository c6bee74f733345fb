"""What bench/throughput.py and bench/pause.py share: databases, seeding, the product's SMTP sink,
real `sendguard run` processes, and small statistics."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from scripts.pg_cluster import PgClusterError, pg_cluster  # noqa: E402

CAMPAIGN = "bench"


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


# --- databases ----------------------------------------------------------------------------------------


def libpq(url: str, database: str | None = None) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy) -> `postgresql://...` (libpq), optionally another db."""
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


@contextmanager
def pg_server(url: str | None) -> Iterator[str]:
    """An admin URL: `url`, else $SENDGUARD_TEST_PG_URL, else a throwaway cluster (stopped at the end)."""
    url = url or os.environ.get("SENDGUARD_TEST_PG_URL")
    if url:
        yield url
        return
    try:
        values = pg_cluster("start")
    except PgClusterError as exc:
        raise SystemExit(f"cannot start a PostgreSQL cluster: {exc}") from None
    progress(f"throwaway PostgreSQL cluster in {values['SENDGUARD_TEST_PG_DIR']}")
    try:
        yield values["SENDGUARD_TEST_PG_URL"]
    finally:
        try:
            pg_cluster("stop", values["SENDGUARD_TEST_PG_DIR"])
        except PgClusterError as exc:
            progress(f"cluster not stopped: {exc}")


@dataclass
class Database:
    """One fresh database for one run: the sendguard schema at `url`, and a sibling for the floor."""

    backend: str
    url: str  # SQLAlchemy URL of the sendguard database
    floor: str  # SQLite file path, or libpq conninfo of the floor's database on the same server
    admin: str | None = None
    names: tuple[str, ...] = ()

    def drop(self) -> None:
        if self.admin is None:
            return
        with psycopg.connect(libpq(self.admin), autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(backend: str, workdir: Path, admin_url: str | None) -> Database:
    from sender.migrate import upgrade

    tag = uuid.uuid4().hex[:10]
    if backend == "sqlite":
        db = Database(backend, f"sqlite:///{workdir}/sg-{tag}.db", str(workdir / f"floor-{tag}.db"))
    else:
        assert admin_url is not None
        names = (f"bench_sg_{tag}", f"bench_floor_{tag}")
        with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(admin_url).set(database=names[0]).render_as_string(hide_password=False)
        db = Database(backend, url, libpq(admin_url, names[1]), admin_url, names)
    upgrade(db.url)
    return db


TEMPLATE = """name = "{name}"
from = "Ana Nowak <ana@example.com>"
{extra}
[[variants]]
letter = "A"
weight = 1
subject = "Hello {{{{ first_name }}}}"
body = "Hi {{{{ first_name }}}}, this is variant A of a short campaign email."
[[variants]]
letter = "B"
weight = 1
subject = "Hi {{{{ first_name }}}}"
body = "Hello {{{{ first_name }}}}, this is variant B of a short campaign email."
"""


def lead_email(i: int) -> str:
    return f"lead{i:06d}@example.com"


def seed(url: str, leads: int, workdir: Path, *, name: str = CAMPAIGN, start: bool = True) -> None:
    """Create, fill and start a campaign with the functions `campaign create`, `leads import` and
    `campaign start` call (in this process: three CLI start-ups would only add noise)."""
    from sender import campaigns
    from sender.campaign_file import load_campaign_file
    from sender.clock import DatabaseClock
    from sender.db import make_engine
    from sender.enroll import import_leads

    path = workdir / f"{name}.toml"
    path.write_text(TEMPLATE.format(name=name, extra=""), encoding="utf-8")
    data = ("email,first_name\n" + "".join(f"{lead_email(i)},Lead{i}\n" for i in range(leads))).encode()
    engine = make_engine(url)
    try:
        now = DatabaseClock(engine).now()
        campaigns.create_or_update(engine, load_campaign_file(path), update_existing=False, now=now)
        result = import_leads(engine, name, data, source="leads.csv", now=now)
        if result.enrolled != leads:
            raise SystemExit(f"seeding enrolled {result.enrolled} of {leads} leads: {result.rejected[:3]}")
        if start:
            campaigns.start(engine, name, actor="bench", reason=None, now=now)
    finally:
        engine.dispose()


# --- processes ------------------------------------------------------------------------------------------


def sender_env(
    url: str, smtp_url: str, *, senders: int, synchronous: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SENDGUARD_FAILPOINTS", None)
    env.update(
        SENDGUARD_DATABASE_URL=url,
        SENDGUARD_SMTP_URL=smtp_url,
        SENDGUARD_MAX_SENDERS=str(senders),
        SENDGUARD_SQLITE_SYNCHRONOUS=synchronous,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def start_sender(
    env: dict[str, str], lock_file: Path, args: list[str], log_file: Path, *, wrap: list[str] | None = None
) -> subprocess.Popen[bytes]:
    penv = dict(env, SENDGUARD_LOCK_FILE=str(lock_file))
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "sender", "run", *args],
            env=penv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sender", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@contextmanager
def product_sink(workdir: Path, maildir: Path | None = None) -> Iterator[tuple[str, int]]:
    """`sendguard sink` (sender/sink.py, aiosmtpd writing a Maildir) on a free loopback port, in its own
    process, as an operator runs it. Yields (host, port)."""
    out = workdir / "sink.log"
    maildir = maildir or workdir / "maildir"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sender", "sink", "--port", "0", "--maildir", str(maildir)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            m = re.search(r"listening on smtp://([\d.]+):(\d+)", out.read_text(errors="replace"))
            if m:
                port = int(m.group(2))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sink did not start:\n{out.read_text(errors='replace')}")
            time.sleep(0.05)  # polling the sink's log for its port, with a deadline
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
