"""The floors the throughput bench compares sendguard with: the bare minimum per row, in plain drivers.

- `db_floor`: N worker processes each loop over a queue doing, per row, three autocommit transactions:
  claim one row (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: `BEGIN IMMEDIATE` + `UPDATE ...
  RETURNING`), insert it into a uniquely keyed log, mark it done. psycopg 3 / sqlite3, nothing else.
  Same server (PostgreSQL: another database on it; SQLite: another file in the same directory), same
  number of processes and same `synchronous` setting as the senders it is compared with.
- `smtp_floor`: N worker processes each push one small pre-serialized message per recipient over one
  reused smtplib connection (`--per-message-connection`: a new connection per message).

Workers are `spawn`ed processes that connect first and then start together on a barrier; the figure is
rows / (last worker end - first worker start).
"""

from __future__ import annotations

import multiprocessing as mp
import smtplib
import sqlite3
import time
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg

# A DDL per backend; `k` is the log's unique key, as (campaign, lead, step) is sendguard's.
_PG_DDL = (
    "DROP TABLE IF EXISTS floor_log, floor_queue",
    "CREATE TABLE floor_queue (id bigserial PRIMARY KEY, status text NOT NULL, claimed_by text)",
    "CREATE INDEX floor_queue_status ON floor_queue (status, id)",
    "CREATE TABLE floor_log (id bigserial PRIMARY KEY, queue_id bigint NOT NULL, k text NOT NULL UNIQUE,"
    " created_at timestamptz NOT NULL DEFAULT now())",
)
_SQLITE_DDL = (
    "DROP TABLE IF EXISTS floor_log",
    "DROP TABLE IF EXISTS floor_queue",
    "CREATE TABLE floor_queue (id INTEGER PRIMARY KEY, status TEXT NOT NULL, claimed_by TEXT)",
    "CREATE INDEX floor_queue_status ON floor_queue (status, id)",
    "CREATE TABLE floor_log (id INTEGER PRIMARY KEY, queue_id INTEGER NOT NULL, k TEXT NOT NULL UNIQUE,"
    " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
)

_PG_CLAIM = (
    "UPDATE floor_queue SET status = 'claimed', claimed_by = %s WHERE id = ("
    "SELECT id FROM floor_queue WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " RETURNING id"
)
_SQLITE_CLAIM = (
    "UPDATE floor_queue SET status = 'claimed', claimed_by = ? WHERE id = ("
    "SELECT id FROM floor_queue WHERE status = 'queued' ORDER BY id LIMIT 1) RETURNING id"
)


@dataclass(frozen=True)
class FloorResult:
    rows: int
    seconds: float
    rate: float
    processes: int
    started: float = 0.0  # time.monotonic() of the first worker's start (one clock for every process)
    ended: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _combine(parts: list[tuple[int, float, float]], processes: int) -> FloorResult:
    rows = sum(p[0] for p in parts)
    started, ended = min(p[1] for p in parts), max(p[2] for p in parts)
    seconds = ended - started
    rate = round(rows / seconds, 1) if seconds > 0 else 0.0
    return FloorResult(rows, round(seconds, 4), rate, processes, started, ended)


def _run_workers(target: Any, args: tuple[Any, ...], processes: int) -> list[tuple[int, float, float]]:
    ctx = mp.get_context("spawn")  # never fork a process that may hold threads or open connections
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(i, barrier, results, *args)) for i in range(processes)]
    for p in procs:
        p.start()
    parts = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed or any(isinstance(x, str) for x in parts):
        raise RuntimeError(
            f"floor workers failed: exit codes {failed}, {[x for x in parts if isinstance(x, str)]}"
        )
    return parts


# --- the database floor -------------------------------------------------------------------------------


def prepare_pg(conninfo: str, rows: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for stmt in _PG_DDL:
            conn.execute(stmt)
        conn.execute("INSERT INTO floor_queue (status) SELECT 'queued' FROM generate_series(1, %s)", (rows,))
        conn.execute("VACUUM ANALYZE floor_queue")


def prepare_sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for stmt in _SQLITE_DDL:
            conn.execute(stmt)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO floor_queue (status) VALUES ('queued')", [()] * rows)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def _pg_worker(i: int, barrier: Barrier, out: Any, conninfo: str) -> None:
    try:
        conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=0)
        me = f"floor-{i}"
        barrier.wait()
        start = time.monotonic()
        n = 0
        while True:
            row = conn.execute(_PG_CLAIM, (me,)).fetchone()
            if row is None:
                break
            qid = row[0]
            conn.execute("INSERT INTO floor_log (queue_id, k) VALUES (%s, %s)", (qid, f"k{qid}"))
            conn.execute("UPDATE floor_queue SET status = 'done' WHERE id = %s", (qid,))
            n += 1
        out.put((n, start, time.monotonic()))
        conn.close()
    except Exception as exc:  # reported to the parent, which raises
        out.put(f"pg floor worker {i}: {exc!r}")


def _sqlite_worker(i: int, barrier: Barrier, out: Any, path: str, synchronous: str) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        me = f"floor-{i}"
        barrier.wait()
        start = time.monotonic()
        n = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(_SQLITE_CLAIM, (me,)).fetchone()
            conn.execute("COMMIT")
            if row is None:
                break
            qid = row[0]
            conn.execute("INSERT INTO floor_log (queue_id, k) VALUES (?, ?)", (qid, f"k{qid}"))
            conn.execute("UPDATE floor_queue SET status = 'done' WHERE id = ?", (qid,))
            n += 1
        out.put((n, start, time.monotonic()))
        conn.close()
    except Exception as exc:  # reported to the parent, which raises
        out.put(f"sqlite floor worker {i}: {exc!r}")


def db_floor_pg(conninfo: str, rows: int, processes: int) -> FloorResult:
    prepare_pg(conninfo, rows)
    return _combine(_run_workers(_pg_worker, (conninfo,), processes), processes)


def db_floor_sqlite(path: Path, rows: int, processes: int, synchronous: str) -> FloorResult:
    prepare_sqlite(path, rows)
    return _combine(_run_workers(_sqlite_worker, (str(path), synchronous), processes), processes)


# --- the SMTP floor -----------------------------------------------------------------------------------


def _smtp_worker(
    i: int, barrier: Barrier, out: Any, host: str, port: int, count: int, payload: bytes, reconnect: bool
) -> None:
    try:
        smtp = None if reconnect else smtplib.SMTP(host, port, local_hostname="floor.test", timeout=30)
        barrier.wait()
        start = time.monotonic()
        for n in range(count):
            if reconnect:
                with smtplib.SMTP(host, port, local_hostname="floor.test", timeout=30) as one:
                    one.sendmail("floor@example.com", [f"floor{i}-{n}@example.com"], payload)
            else:
                assert smtp is not None
                smtp.sendmail("floor@example.com", [f"floor{i}-{n}@example.com"], payload)
        out.put((count, start, time.monotonic()))
        if smtp is not None:
            smtp.quit()
    except Exception as exc:  # reported to the parent, which raises
        out.put(f"smtp floor worker {i}: {exc!r}")


def smtp_floor(
    host: str, port: int, messages: int, processes: int, payload: bytes, *, reconnect: bool = False
) -> FloorResult:
    per = max(1, messages // processes)
    parts = _run_workers(_smtp_worker, (host, port, per, payload, reconnect), processes)
    return _combine(parts, processes)
