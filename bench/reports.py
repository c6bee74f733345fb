"""Report latency at scale, beside its floor (issue 3 acceptance 4, issue 5 `bench/reports.py`).

    .venv/bin/python bench/reports.py --backend sqlite|postgresql [--rows 1000000] [--url URL] [--keep]

1. Seeds a fresh database migrated with `sender.migrate.upgrade` (SQLite: a file in a temp dir;
   PostgreSQL: a fresh database on --url / $SENDGUARD_TEST_PG_URL, else a throwaway cluster started with
   scripts/pg-cluster.sh and stopped at the end) with --rows send_log rows and the rest of a realistic
   history (bench/_seed.py, run in a child process so its memory never counts below).
2. Times, on an engine made like the dashboard's (`make_engine(url, readonly=True)`):
   - every public report function of reports.py (those taking an engine; any new one not listed in
     CASES is reported as untimed), with realistic arguments;
   - every dashboard page's data load: the `dashboard_data.load_*_data` calls each page makes;
   each --repeat times after one warm-up, min and median. The floor: the very statements SQLAlchemy
   sent (captured with a `before_cursor_execute` listener during the warm-up) replayed through the bare
   driver (`sqlite3` / `psycopg`) and fetched, interleaved with the sendguard runs, so the ratio
   sendguard/raw survives a noisy machine.
3. Reports the peak RSS of this process (ru_maxrss) after all loads. It imports streamlit and plotly as
   the dashboard does and keeps the last result of every case alive (like st.cache_data), so it is the
   proxy for the dashboard process's RSS (issue 3: < 400 MB).

Prints ONE JSON line of figures, then a human-readable table. Targets (issue 3 acceptance 4, issue 5
acceptance 4), for every page's default view and the variants an operator picks within that view's range
(see page_cases): < 1 s on PostgreSQL, < 2 s on SQLite, each <= 1.5x its raw-SQL figure (medians); RSS
< 400 MB. Wider views of the live log (7 days, 30 days, all time) are printed beside them without a
target. Exit status 0 either way (a benchmark, not a test); `targets_met` in the JSON says whether they
held.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is bench/reports.py: drop bench/ from the path so `import reports` is the product's module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from sqlalchemy import Engine, event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import reports  # noqa: E402
from scripts.pg_cluster import pg_cluster, psycopg_conninfo  # noqa: E402
from sender.db import READER_SESSION_SQL, make_engine  # noqa: E402
from sender.migrate import upgrade  # noqa: E402

try:  # the page loaders (another module may not exist yet: then pages are timed from reports.py)
    import dashboard_data as dd
except ImportError:  # pragma: no cover
    dd = None  # type: ignore[assignment]

try:  # what the dashboard process imports besides the loaders: counted in the RSS proxy
    import plotly.express  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    import streamlit  # noqa: F401

    DASHBOARD_IMPORTS = True
except ImportError:  # pragma: no cover
    DASHBOARD_IMPORTS = False

TARGET_S = {"sqlite": 2.0, "postgresql": 1.0}
TARGET_RATIO = 1.5
TARGET_RSS_MB = 400
# A page missing the ratio only by this much in absolute terms (a pool checkout, a DataFrame) is flagged as
# such: 1.5x of a 0.3 ms floor is not a meaningful budget.
FIXED_OVERHEAD_S = 0.005
IMPORTED_LABEL = "legacy-export"
_TX_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


def rss_mb() -> float:
    """Current resident set size (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the database ----------------------------------------------------------------------------------


@dataclass
class Database:
    backend: str
    url: str  # SQLAlchemy URL of the bench database
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what --keep leaves behind, and how to remove it

    session_sql: list[str] = field(default_factory=list)  # --session: run on every connection

    def raw_connect(self) -> Any:
        """A bare driver connection (the floor): sqlite3 in autocommit mode / psycopg in autocommit."""
        if self.backend == "sqlite":
            conn: Any = sqlite3.connect(str(make_url(self.url).database), isolation_level=None)
        else:
            import psycopg

            conn = psycopg.connect(psycopg_conninfo(self.url), autocommit=True)
            for statement in READER_SESSION_SQL:  # the same session as the dashboard's reader engine
                conn.execute(statement)
        for sql in self.session_sql:
            conn.execute(sql)
        return conn

    def engine(self) -> Engine:
        """An engine made like the dashboard's reader (`make_engine(url, readonly=True)`), plus --session."""
        engine = make_engine(self.url, readonly=True)
        if self.session_sql:

            @event.listens_for(engine, "connect")
            def _session(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                for sql in self.session_sql:
                    cursor.execute(sql)
                cursor.close()
                if self.backend == "postgresql":
                    dbapi_connection.commit()

        return engine

    def execute_ddl(self, statements: list[str]) -> None:
        conn = self.raw_connect()
        try:
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()


def open_database(args: argparse.Namespace) -> Database:
    if args.db:  # an already seeded database (kept by an earlier --keep run)
        backend = "sqlite" if make_url(args.db).get_backend_name() == "sqlite" else "postgresql"
        return Database(backend, args.db)
    if args.backend == "sqlite":
        tmp = tempfile.mkdtemp(prefix="sendguard-bench-")
        db = Database("sqlite", f"sqlite:///{tmp}/bench.db")
        if args.keep:
            db.kept.append(f"SQLite file {tmp}/bench.db (remove with: rm -r {tmp})")
        else:
            db.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
        return db

    import psycopg
    from psycopg import sql

    admin = args.url or os.environ.get("SENDGUARD_TEST_PG_URL")
    cluster_dir = None
    db = Database("postgresql", "")
    if not admin:
        values = pg_cluster("start")
        admin, cluster_dir = values["SENDGUARD_TEST_PG_URL"], values["SENDGUARD_TEST_PG_DIR"]
        if args.keep:
            db.kept.append(
                f"PostgreSQL cluster in {cluster_dir} (stop with: scripts/pg-cluster.sh stop {cluster_dir})"
            )
        else:
            db.cleanup.append(lambda: pg_cluster("stop", cluster_dir))
    if not make_url(admin).drivername.startswith("postgresql"):
        raise SystemExit(f"--url must be a PostgreSQL URL, got {make_url(admin).drivername}")
    name = f"sendguard_bench_{os.getpid()}"
    with psycopg.connect(psycopg_conninfo(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db.url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    if args.keep:
        db.kept.append(f"PostgreSQL database {name} ({make_url(db.url).render_as_string()})")
    else:

        def drop() -> None:
            with psycopg.connect(psycopg_conninfo(admin), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

        db.cleanup.insert(0, drop)  # before the cluster stops
    return db


def seed_database(db: Database, rows: int) -> dict[str, Any]:
    """Migrate, then seed in a child process (its memory must not count in this process's peak RSS)."""
    t0 = time.perf_counter()
    upgrade(db.url)
    migrate_s = time.perf_counter() - t0
    result = subprocess.run(
        [sys.executable, str(HERE / "_seed.py"), "--url", db.url, "--rows", str(rows)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"seeding failed ({result.returncode}):\n{result.stderr[-4000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["migrate_seconds"] = round(migrate_s, 2)
    return info


# --- capture and replay --------------------------------------------------------------------------


class Capture:
    """Records every statement (with its DBAPI parameters) SQLAlchemy sends while active."""

    def __init__(self, engine: Engine) -> None:
        self.active = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if self.active and not _TX_CONTROL.match(statement):
            self.statements.append((statement, parameters))

    def record(self, fn: Callable[[], Any]) -> tuple[Any, list[tuple[str, Any]], str | None]:
        self.statements, self.active = [], True
        try:
            result, error = fn(), None
        except reports.TooManyBuckets as exc:  # the page shows this; the SQL still ran in full
            result, error = None, f"TooManyBuckets: {exc}"
        finally:
            self.active = False
        return result, self.statements, error


def replay(raw: Any, statements: list[tuple[str, Any]]) -> int:
    """The floor: the same statements through the bare driver, every row fetched. Returns rows."""
    n = 0
    for statement, params in statements:
        cur = raw.execute(statement, params)
        if cur.description is not None:
            n += len(cur.fetchall())
    return n


def result_rows(obj: Any) -> int:
    """How many rows a result carries (DataFrames, dicts of them, dataclasses of them)."""
    if isinstance(obj, pd.DataFrame):
        return len(obj)
    if isinstance(obj, dict):
        return len(obj.get("buckets", [])) if "buckets" in obj else 1
    if is_dataclass(obj):
        return sum(result_rows(getattr(obj, f.name)) for f in fields(obj))
    if isinstance(obj, list | tuple):
        return sum(result_rows(o) for o in obj) if isinstance(obj, tuple) else len(obj)
    return 0


@dataclass
class Timing:
    name: str
    group: str  # "page" | "report"
    sg: list[float]
    raw: list[float]
    statements: int
    rows: int
    raw_rows: int
    error: str | None
    target_s: float | None = None

    @property
    def sg_min(self) -> float:
        return min(self.sg)

    @property
    def sg_median(self) -> float:
        return statistics.median(self.sg)

    @property
    def raw_min(self) -> float:
        return min(self.raw)

    @property
    def raw_median(self) -> float:
        return statistics.median(self.raw)

    @property
    def ratio(self) -> float:
        return self.sg_median / self.raw_median if self.raw_median > 0 else float("inf")

    @property
    def ratio_min(self) -> float:
        return self.sg_min / self.raw_min if self.raw_min > 0 else float("inf")

    @property
    def ok(self) -> bool | None:
        if self.target_s is None:
            return None
        # A page whose load raises (TooManyBuckets: the page shows an error instead of data) is no pass.
        return self.error is None and self.sg_median < self.target_s and self.ratio <= TARGET_RATIO

    @property
    def fixed_overhead_only(self) -> bool:
        return (
            self.ok is False
            and self.error is None
            and self.target_s is not None
            and self.sg_median < self.target_s
            and self.sg_median - self.raw_median < FIXED_OVERHEAD_S
        )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sg_min": round(self.sg_min, 4),
            "sg_median": round(self.sg_median, 4),
            "raw_min": round(self.raw_min, 4),
            "raw_median": round(self.raw_median, 4),
            "ratio": round(self.ratio, 2),
            "ratio_min": round(self.ratio_min, 2),
            "statements": self.statements,
            "rows": self.rows,
        }
        if self.error:
            out["error"] = self.error
        if self.target_s is not None:
            out["ok"] = self.ok
            if self.fixed_overhead_only:
                out["fixed_overhead_only"] = True
        return out


class Bench:
    def __init__(self, db: Database, engine: Engine, repeat: int, only: re.Pattern[str] | None) -> None:
        self.db, self.engine, self.repeat, self.only = db, engine, repeat, only
        self.capture = Capture(engine)
        self.raw = db.raw_connect()
        self.kept: dict[str, Any] = {}  # the last result of every case, alive like st.cache_data's
        self.timings: list[Timing] = []

    def run(self, name: str, group: str, fn: Callable[[], Any], target_s: float | None = None) -> None:
        if self.only and not self.only.search(name):
            return
        result, statements, error = self.capture.record(fn)  # warm-up + capture
        raw_rows = replay(self.raw, statements)  # warm the floor too
        sg: list[float] = []
        raw: list[float] = []
        for i in range(self.repeat):
            # alternate which goes first, so neither always finds the caches the other just warmed
            for which in ("sg", "raw") if i % 2 == 0 else ("raw", "sg"):
                t0 = time.perf_counter()
                if which == "sg":
                    try:
                        result = fn()
                    except reports.TooManyBuckets:
                        result = None
                    sg.append(time.perf_counter() - t0)
                else:
                    replay(self.raw, statements)
                    raw.append(time.perf_counter() - t0)
        self.kept[name] = result
        t = Timing(name, group, sg, raw, len(statements), result_rows(result), raw_rows, error, target_s)
        self.timings.append(t)
        print(
            f"  {name:<58} {t.sg_median:8.3f} s  raw {t.raw_median:8.3f} s  x{t.ratio:5.2f}", file=sys.stderr
        )

    def close(self) -> None:
        self.raw.close()


# --- the cases -----------------------------------------------------------------------------------


def report_cases(engine: Engine) -> list[tuple[str, Callable[..., Any], Callable[[], Any]]]:
    """(name, reports function, call) for every public report function, with realistic arguments:
    buckets of 10 min and 1 h over the whole range, the live log and the imported one, each kind."""
    live, imp = reports.LIVE, reports.Source.imported(IMPORTED_LABEL)
    one = "campaign-01"
    now = datetime.now(UTC)
    r = reports
    cases: list[tuple[str, Callable[..., Any], Callable[[], Any]]] = [
        ("imported_labels", r.imported_labels, lambda: r.imported_labels(engine)),
        ("check_source(live, campaign)", r.check_source, lambda: r.check_source(engine, live, one)),
        ("check_source(imported)", r.check_source, lambda: r.check_source(engine, imp)),
        ("campaign_overview", r.campaign_overview, lambda: r.campaign_overview(engine)),
    ]
    for b, bn in ((600, "10m"), (3600, "1h")):
        cases += [
            (f"sends_timeline(outcome, {bn}, all time)", r.sends_timeline,
             lambda b=b: r.sends_timeline(engine, bucket_seconds=b)),
            (f"sends_timeline(instance, {bn}, all time)", r.sends_timeline,
             lambda b=b: r.sends_timeline(engine, bucket_seconds=b, by="instance")),
        ]  # fmt: skip
    cases += [
        ("sends_timeline(outcome, 10m, one campaign)", r.sends_timeline,
         lambda: r.sends_timeline(engine, one, bucket_seconds=600)),
        ("sends_timeline(outcome, 10m, last 3 days)", r.sends_timeline,
         lambda: r.sends_timeline(engine, bucket_seconds=600, since=now - timedelta(days=3))),
        ("sends_timeline(instance, 10m, last 3 days)", r.sends_timeline,
         lambda: r.sends_timeline(engine, bucket_seconds=600, since=now - timedelta(days=3), by="instance")),
        ("prevented_timeline(10m)", r.prevented_timeline, lambda: r.prevented_timeline(engine, bucket_seconds=600)),
        ("prevented_timeline(1h)", r.prevented_timeline, lambda: r.prevented_timeline(engine, bucket_seconds=3600)),
    ]  # fmt: skip
    for src, sn in ((live, "live"), (imp, "imported")):
        for b, bn in ((600, "10m"), (3600, "1h")):
            cases.append((f"duplicate_summary({sn}, {bn})", r.duplicate_summary,
                          lambda s=src, b=b: r.duplicate_summary(engine, s, bucket_seconds=b)))  # fmt: skip
        cases += [
            (f"duplicate_buckets({sn}, 10m)", r.duplicate_buckets,
             lambda s=src: r.duplicate_buckets(engine, s, bucket_seconds=600)),
            (f"address_duplicates({sn})", r.address_duplicates, lambda s=src: r.address_duplicates(engine, s)),
            (f"cross_campaign_duplicates({sn})", r.cross_campaign_duplicates,
             lambda s=src: r.cross_campaign_duplicates(engine, s)),
            (f"prevented_duplicates({sn})", r.prevented_duplicates, lambda s=src: r.prevented_duplicates(engine, s)),
            (f"duplicates_by_instance({sn})", r.duplicates_by_instance,
             lambda s=src: r.duplicates_by_instance(engine, s)),
        ]  # fmt: skip
        for kind in ("exact", "cross_variant", "any", "address", "cross_campaign", "prevented"):
            if kind == "prevented" and not src.live:
                continue
            cases.append((f"duplicate_details({sn}, {kind})", r.duplicate_details,
                          lambda s=src, k=kind: r.duplicate_details(engine, s, k)))  # fmt: skip
    day = now - timedelta(days=1)
    cases += [
        ("duplicate_summary(live, 10m, last 24 hours)", r.duplicate_summary,
         lambda: r.duplicate_summary(engine, live, bucket_seconds=600, since=day)),
        ("cross_campaign_duplicates(live, last 24 hours)", r.cross_campaign_duplicates,
         lambda: r.cross_campaign_duplicates(engine, live, since=day)),
        ("duplicate_details(live, cross_campaign, last 24 hours)", r.duplicate_details,
         lambda: r.duplicate_details(engine, live, "cross_campaign", since=day)),
    ]  # fmt: skip
    cases.append(("duplicate_summary(live, 10m, one campaign)", r.duplicate_summary,
                  lambda: r.duplicate_summary(engine, live, one, bucket_seconds=600)))  # fmt: skip
    return cases


def public_report_functions() -> set[str]:
    """reports.py's public functions that query: the ones taking an engine first."""
    out = set()
    for name, fn in inspect.getmembers(reports, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != reports.__name__:
            continue
        params = list(inspect.signature(fn).parameters)
        if params and params[0] == "engine":
            out.add(name)
    return out


def page_cases(engine: Engine) -> tuple[list[tuple[str, Callable[[], Any], bool]], str, list[str]]:
    """(name, load, targeted) per dashboard page view: the loader calls each page makes on one script run.
    Targeted: each page's default view and the variants an operator picks within the default range
    (buckets, kinds, one campaign, sources); the issue's latency targets apply to these. Wider views of
    the live log (7 days, 30 days, all time) are timed and printed too, without a target: their cost
    grows with the range asked for, which is why the live views default to a recent range."""
    live, imp = reports.LIVE, reports.Source.imported(IMPORTED_LABEL)

    def names() -> list[str]:
        return dd.campaign_names(engine)

    def since(range_: timedelta | None, bucket: int) -> datetime | None:
        # as dashboard_ui.time_range: the database's clock, floored to the bucket
        if range_ is None:
            return None
        epoch = int((dd.db_now(engine) - range_).timestamp())
        return datetime.fromtimestamp(epoch - epoch % bucket, UTC)

    def campaigns_page() -> Any:
        # the overview fragment (all campaigns), the picker, then the picked campaign's audit trail
        first = names()[0]
        return dd.load_campaigns_data(engine, None), dd.load_campaigns_data(engine, first)

    def timeline_page(campaign_index: int | None, bucket: int, range_: timedelta | None) -> Any:
        campaign = names()[campaign_index] if campaign_index is not None else None
        return dd.load_timeline_data(engine, campaign, bucket, since(range_, bucket), None)

    def duplicates_page(
        source: reports.Source,
        bucket: int,
        kind: str,
        range_: timedelta | None,
        campaign_index: int | None = None,
    ) -> Any:
        labels = dd.load_import_data(engine)
        campaign = None
        if source.live:
            campaign = names()[campaign_index] if campaign_index is not None else None
        return labels, dd.load_duplicates_data(
            engine, source, campaign, bucket, kind, since=since(range_, bucket)
        )

    day, days3, week, month = (timedelta(days=n) for n in (1, 3, 7, 30))
    pages: list[tuple[str, Callable[[], Any], bool]] = [
        ("Campaigns", campaigns_page, True),
        ("Timeline (default: all, 10m, last 3 days)", lambda: timeline_page(None, 600, days3), True),
        ("Timeline (all, 10m, last 24 hours)", lambda: timeline_page(None, 600, day), True),
        ("Timeline (all, 1h, last 3 days)", lambda: timeline_page(None, 3600, days3), True),
        ("Timeline (one campaign, 10m, last 3 days)", lambda: timeline_page(0, 600, days3), True),
        ("Timeline (one campaign, 1h, all time)", lambda: timeline_page(0, 3600, None), False),
        ("Timeline (all, 1h, last 7 days)", lambda: timeline_page(None, 3600, week), False),
        ("Timeline (all, 1h, last 30 days)", lambda: timeline_page(None, 3600, month), False),
        ("Timeline (all, 1d, all time)", lambda: timeline_page(None, 86_400, None), False),
        (
            "Duplicates (default: live, 10m, any, last 24 hours)",
            lambda: duplicates_page(live, 600, "any", day),
            True,
        ),
        ("Duplicates (live, 1h, any, last 24 hours)", lambda: duplicates_page(live, 3600, "any", day), True),
    ]
    for kind in ("exact", "cross_variant", "address", "cross_campaign", "prevented"):
        pages.append((f"Duplicates (live, 10m, {kind}, last 24 hours)",
                      lambda k=kind: duplicates_page(live, 600, k, day), True))  # fmt: skip
    pages += [
        ("Duplicates (live, one campaign, 10m, any, 24 hours)", lambda: duplicates_page(live, 600, "any", day, 0), True),
        ("Duplicates (live, 1h, any, last 3 days)", lambda: duplicates_page(live, 3600, "any", days3), False),
        ("Duplicates (live, 1h, any, last 7 days)", lambda: duplicates_page(live, 3600, "any", week), False),
        ("Duplicates (live, 1h, any, all time)", lambda: duplicates_page(live, 3600, "any", None), False),
        ("Duplicates (live, 1h, cross_campaign, all time)",
         lambda: duplicates_page(live, 3600, "cross_campaign", None), False),
    ]  # fmt: skip
    for kind in ("any", "address", "cross_campaign"):
        pages.append((f"Duplicates (imported, 10m, {kind}, all time)",
                      lambda k=kind: duplicates_page(imp, 600, k, None), True))  # fmt: skip
    pages.append(
        ("Duplicates (imported, 1h, any, all time)", lambda: duplicates_page(imp, 3600, "any", None), True)
    )
    pages.append(("Import", lambda: dd.load_import_data(engine), True))
    pages.append(("Senders", lambda: dd.load_senders_data(engine), True))
    pages.append(("Review", lambda: dd.load_review_data(engine), True))
    loaders = sorted(n for n in dir(dd) if re.fullmatch(r"load_\w+_data", n))
    return pages, "dashboard_data.load_*_data (the loaders the pages wrap in st.cache_data)", loaders


# --- output --------------------------------------------------------------------------------------


def human_table(out: dict[str, Any], timings: list[Timing]) -> str:
    seed = out.get("seed") or {}
    lines = [
        f"sendguard report bench: {out['backend']} {out['server_version']}, "
        f"{out['send_log_rows']:,} send_log rows"
        + (
            f", seeded in {seed['seconds']:.1f} s ({seed['rows_total']:,} rows in all tables, "
            f"{seed['rows_per_s']:,} rows/s; send_log {seed['counts']['send_log']:,} rows incl. index builds "
            f"{seed['send_log_rows_per_s']:,} rows/s)"
            if seed
            else " (existing database)"
        ),
        f"median of {out['repeat']} runs after a warm-up; raw = the same statements through the bare driver; "
        f"pages: {out['pages_source']}",
        "",
    ]
    head = f"{'':<50}{'sendguard s':>12}{'raw s':>9}{'ratio':>7}{'stmts':>6}{'rows':>7}  "
    target = TARGET_S[out["backend"]]
    lines.append(f"PAGES (target < {target:g} s, <= {TARGET_RATIO}x raw)".ljust(50) + head[50:] + "ok")
    for t in (t for t in timings if t.group == "page"):
        note = "  (" + t.error.split(":")[0] + ")" if t.error else ""
        lines.append(
            f"  {t.name:<48}{t.sg_median:>12.3f}{t.raw_median:>9.3f}{t.ratio:>7.2f}{t.statements:>6}{t.rows:>7}  "
            f"{'ok' if t.ok else ('MISS*' if t.fixed_overhead_only else 'ERROR' if t.error else 'MISS')}{note}"
        )
    if any(t.fixed_overhead_only for t in timings):
        lines.append(
            f"  * ratio missed by less than {FIXED_OVERHEAD_S * 1000:g} ms in absolute terms (per-call overhead)"
        )
    lines.append("")
    lines.append("WIDER LIVE VIEWS (no target: the cost grows with the range)".ljust(50) + head[50:])
    for t in (t for t in timings if t.group == "wide"):
        note = "  (" + t.error.split(":")[0] + ")" if t.error else ""
        lines.append(
            f"  {t.name:<48}{t.sg_median:>12.3f}{t.raw_median:>9.3f}{t.ratio:>7.2f}{t.statements:>6}{t.rows:>7}{note}"
        )
    lines.append("")
    lines.append("REPORT FUNCTIONS (reports.py)".ljust(50) + head[50:])
    for t in (t for t in timings if t.group == "report"):
        note = "  (" + t.error.split(":")[0] + ")" if t.error else ""
        lines.append(
            f"  {t.name:<48}{t.sg_median:>12.3f}{t.raw_median:>9.3f}{t.ratio:>7.2f}{t.statements:>6}{t.rows:>7}{note}"
        )
    if out["untimed_report_functions"]:
        lines.append(f"  NOT TIMED (new public functions?): {', '.join(out['untimed_report_functions'])}")
    lines.append("")
    lines.append(
        f"peak RSS {out['peak_rss_mb']:.0f} MB (after imports, before queries: {out['rss_after_imports_mb']:.0f} MB; "
        f"streamlit+plotly imported: {out['dashboard_imports']}), target < {TARGET_RSS_MB} MB: "
        f"{'ok' if out['rss_ok'] else 'MISS'}"
    )
    slowest = max((t for t in timings if t.group == "page"), key=lambda t: t.sg_median, default=None)
    if slowest:
        lines.append(f"slowest page: {slowest.name} {slowest.sg_median:.3f} s (x{slowest.ratio:.2f} raw)")
    lines.append(f"targets met: {out['targets_met']}")
    return "\n".join(lines)


def server_version(db: Database, raw: Any) -> str:
    if db.backend == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    return "PostgreSQL " + raw.execute("SHOW server_version").fetchone()[0].split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report latency at scale, beside the raw-SQL floor.")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="send_log rows to seed (default 1,000,000)"
    )
    parser.add_argument("--url", help="PostgreSQL admin URL to create the bench database on "
                                      "(default $SENDGUARD_TEST_PG_URL, else a throwaway cluster)")  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the seeded database (and cluster); print where"
    )
    parser.add_argument("--db", help="time this already seeded database (from --keep) instead of seeding one")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per case after the warm-up (default 3)"
    )
    parser.add_argument("--only", help="regular expression: time only the cases whose name matches")
    parser.add_argument(
        "--ddl",
        action="append",
        default=[],
        metavar="SQL",
        help="experiment: run this SQL on the bench database before timing (e.g. a proposed "
        "index; repeatable)",
    )
    parser.add_argument("--session", action="append", default=[], metavar="SQL",
                        help="experiment: run this SQL on every connection, sendguard's and the floor's "
                             "(e.g. 'SET jit = off'; repeatable)")  # fmt: skip
    args = parser.parse_args(argv)

    rss_after_imports = rss_mb()
    db = open_database(args)
    seed_info: dict[str, Any] | None = None
    try:
        if not args.db:
            print(f"seeding {args.rows:,} send_log rows ({db.backend}) ...", file=sys.stderr)
            seed_info = seed_database(db, args.rows)
            print(f"  seeded in {seed_info['seconds']} s", file=sys.stderr)
        if args.ddl:
            t0 = time.perf_counter()
            db.execute_ddl(args.ddl)
            print(f"  experiment DDL ran in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        db.session_sql = args.session
        engine = db.engine()  # made as the dashboard makes its reader engine
        bench = Bench(db, engine, args.repeat, re.compile(args.only) if args.only else None)
        version = server_version(db, bench.raw)
        with engine.connect() as conn:
            from sqlalchemy import text

            send_log_rows = conn.execute(text("SELECT count(*) FROM send_log")).scalar_one()

        pages, pages_source, loaders = page_cases(engine)
        print("pages:", file=sys.stderr)
        for name, fn, targeted in pages:
            if targeted:
                bench.run(name, "page", fn, TARGET_S[db.backend])
            else:
                bench.run(name, "wide", fn)
        print("report functions:", file=sys.stderr)
        cases = report_cases(engine)
        for name, _, fn in cases:
            bench.run(name, "report", fn)
        untimed = sorted(public_report_functions() - {fn.__name__ for _, fn, _ in cases})
        peak = peak_rss_mb()
        bench.close()
        engine.dispose()

        page_timings = [t for t in bench.timings if t.group == "page"]
        rss_ok = peak < TARGET_RSS_MB
        out: dict[str, Any] = {
            "bench": "reports",
            "backend": db.backend,
            "server_version": version,
            "send_log_rows": send_log_rows,
            "repeat": args.repeat,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "seed": seed_info,
            "experiment_ddl": args.ddl,
            "experiment_session": args.session,
            "pages_source": pages_source,
            "page_loaders": loaders,
            "pages": {t.name: t.as_json() for t in page_timings},
            "wide_views": {t.name: t.as_json() for t in bench.timings if t.group == "wide"},
            "reports": {t.name: t.as_json() for t in bench.timings if t.group == "report"},
            "untimed_report_functions": untimed,
            "target_page_s": TARGET_S[db.backend],
            "target_ratio": TARGET_RATIO,
            "pages_ok": bool(page_timings) and all(t.ok for t in page_timings),
            "slowest_page_s": round(max((t.sg_median for t in page_timings), default=0.0), 4),
            "max_page_ratio": round(max((t.ratio for t in page_timings), default=0.0), 2),
            "peak_rss_mb": round(peak, 1),
            "rss_after_imports_mb": round(rss_after_imports, 1),
            "dashboard_imports": DASHBOARD_IMPORTS,
            "rss_ok": rss_ok,
            "targets_met": bool(page_timings) and all(t.ok for t in page_timings) and rss_ok,
            "targets_met_but_fixed_overhead": bool(page_timings)
            and rss_ok
            and all(t.ok or t.fixed_overhead_only for t in page_timings),
            "pages_missed": [t.name for t in page_timings if not t.ok and not t.fixed_overhead_only],
            "pages_raising": [t.name for t in page_timings if t.error],
            "kept": db.kept,
        }
        print(json.dumps(out), flush=True)
        print(human_table(out, bench.timings))
        for line in db.kept:
            print(f"kept: {line}")
    finally:
        for fn in db.cleanup:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 (cleanup must go on)
                print(f"cleanup failed: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
