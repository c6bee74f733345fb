"""Sender throughput beside its floors, measured in the same run.

    .venv/bin/python bench/throughput.py --backend sqlite|postgresql --senders N --leads M \
        --transport null|smtp [--repeat 3] [--synchronous FULL|NORMAL] [--min-ratio 0.5]

Each repeat: a fresh database (SQLite file in a temp dir; PostgreSQL: a new database on `--url`, else
$SENDGUARD_TEST_PG_URL, else a throwaway cluster), a campaign of M leads, N real `sendguard run
--until-idle` processes (each with its own lock file, SENDGUARD_MAX_SENDERS=N); then, on the same server,
with the same N processes and the same `synchronous` setting, the raw floor loop of bench/_floor.py (claim
with SKIP LOCKED / BEGIN IMMEDIATE, insert into a uniquely keyed log, mark done: three autocommit
transactions per row); with `--transport smtp`, also a raw smtplib loop (one reused connection per
process) against the same `sendguard sink` the senders deliver to.

sendguard's rate is taken from its send_log, over the window in which every sender was sending (from the
last sender's first reservation to the first sender's last record; the whole first-to-last span when that
window is less than half of it), so process start-up and the idle check do not count, as the floors'
connection set-up does not. `wall` figures include them.

Prints one JSON line (medians over the repeats, and every run) on stdout, then a human line with the
ratios; progress on stderr. `--min-ratio R` exits 1 when the median ratio to the database floor (null
transport) or to the smtplib floor (smtp transport) is below R: the CI smoke. `--profile FILE` runs the
first sender under py-spy (collapsed stacks in FILE) and prints where its time went.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cpu import ROLES, CpuSampler  # noqa: E402
from _floor import db_floor_pg, db_floor_sqlite, smtp_floor  # noqa: E402
from _harness import (  # noqa: E402
    CAMPAIGN,
    Database,
    fresh_database,
    pg_server,
    progress,
    seed,
    sender_env,
    start_sender,
    summary,
)
from sqlalchemy import func, select  # noqa: E402

from models import CampaignLead, SendLog  # noqa: E402
from sender.db import make_engine  # noqa: E402


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def measure_senders(db: Database) -> dict[str, Any]:
    """Rates from the send log: all sends over first reservation .. last record, and the window in
    which every sender was at work."""
    sl = SendLog.__table__
    engine = make_engine(db.url, readonly=True)
    try:
        with engine.connect() as conn:
            per = conn.execute(
                select(sl.c.instance_id, func.count(), func.min(sl.c.created_at), func.max(sl.c.finished_at))
                .where(sl.c.status == "sent")
                .group_by(sl.c.instance_id)
            ).all()
            states = dict(
                conn.execute(
                    select(CampaignLead.__table__.c.status, func.count()).group_by(
                        CampaignLead.__table__.c.status
                    )
                ).all()
            )
            live = conn.execute(
                select(func.count(), func.count(func.distinct(sl.c.enrollment_id))).where(
                    sl.c.status == "sent"
                )
            ).one()
            lo = max(r[2] for r in per)
            hi = min(r[3] for r in per)
            steady = conn.execute(
                select(func.count()).where(
                    sl.c.status == "sent", sl.c.created_at >= lo, sl.c.finished_at <= hi
                )
            ).scalar_one()
    finally:
        engine.dispose()
    sent = sum(r[1] for r in per)
    first, last = min(r[2] for r in per), max(r[3] for r in per)
    overall_s = _seconds(first, last)
    steady_s = _seconds(lo, hi)
    out: dict[str, Any] = {
        "sent": sent,
        "per_sender": sorted(r[1] for r in per),
        "states": states,
        "duplicates": live[0] - live[1],
        "seconds": round(overall_s, 4),
        "rate_overall": round(sent / overall_s, 1) if overall_s > 0 else 0.0,
        "steady_seconds": round(steady_s, 4),
        "rate_steady": round(steady / steady_s, 1) if steady_s > 0 and steady > 0 else 0.0,
    }
    # A sender that started late (a slow start-up on a loaded box) shrinks the all-senders window to a
    # few messages: too few to be a figure, so then the overall rate stands.
    steady_used = steady_s >= 0.5 * overall_s
    out["rate"] = out["rate_steady"] if steady_used else out["rate_overall"]
    # The rate's window, for the CPU sampler (time.time(), messages).
    out["window"] = (_epoch(lo), _epoch(hi), steady) if steady_used else (_epoch(first), _epoch(last), sent)
    return out


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def run_senders(
    db: Database, args: argparse.Namespace, smtp_url: str, work: Path, profile: Path | None
) -> dict[str, Any]:
    env = sender_env(
        db.url,
        smtp_url,
        senders=args.senders,
        synchronous=args.synchronous,
        extra={"SENDGUARD_LOG_LEVEL": args.log_level},
    )
    run_args = ["--until-idle", "--interval", str(args.interval)]
    if args.batch is not None:
        run_args += ["--batch", str(args.batch)]
    procs = []
    t0 = time.monotonic()
    for i in range(args.senders):
        wrap = None
        if profile is not None and i == 0:
            # --idle: waits on the database (fsync, a lock) count too, as they do in the wall time.
            wrap = [
                args.py_spy,
                "record",
                "--idle",
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                str(profile),
                "--",
            ]
        procs.append(
            start_sender(env, work / f"sender-{i}.lock", run_args, work / f"sender-{i}.log", wrap=wrap)
        )
    codes = [p.wait(timeout=args.timeout) for p in procs]
    wall = time.monotonic() - t0
    if any(codes):
        logs = "\n".join(
            (work / f"sender-{i}.log").read_text(errors="replace")[-2000:] for i in range(args.senders)
        )
        raise SystemExit(f"senders exited {codes}:\n{logs}")
    out = measure_senders(db)
    out["wall_seconds"] = round(wall, 3)
    out["rate_wall"] = round(out["sent"] / wall, 1)
    if out["sent"] != args.leads or out["duplicates"]:
        raise SystemExit(f"the senders did not send every lead exactly once: {out}")
    return out


def _cpu_of_run(sampler: CpuSampler, one: dict[str, Any]) -> dict[str, Any]:
    """CPU ms per message by role over each phase's measured window (`_cpu`)."""
    start, end, messages = one["sendguard"]["window"]
    out = {"sendguard": sampler.per_message(start, end, messages, clock="wall")}
    for phase in ("floor_db", "floor_smtp"):
        if phase in one:
            f = one[phase]
            out[phase] = sampler.per_message(f["started"], f["ended"], f["rows"])
    return out


def _cpu_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per phase and role, the median over the runs that have the figure."""
    out: dict[str, dict[str, float]] = {}
    for phase in ("sendguard", "floor_db", "floor_smtp"):
        figures = [r["cpu"][phase] for r in runs if r["cpu"].get(phase)]
        if not figures:
            continue
        medians = {
            k: round(statistics.median(f.get(k, 0.0) for f in figures), 3) for k in (*ROLES, "cores_busy")
        }
        out[phase] = {k: v for k, v in medians.items() if v > 0}  # a role absent from most runs is left out
    return out


def sample_payload() -> bytes:
    from sender.message import build_message

    msg = build_message(
        from_addr="Ana Nowak <ana@example.com>",
        to_addr="lead000001@example.com",
        subject="Hello Lead1",
        body="Hi Lead1, this is variant A of a short campaign email.",
        message_id="<sg.c1.l1.s0@example.com>",
        reply_to=None,
        unsubscribe=None,
        campaign=CAMPAIGN,
    )
    return bytes(msg)


def _frame(raw: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`."""
    name, _, where = raw.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})" if where else name


def summarize_profile(
    path: Path, root: str = "SenderService.send_pass", top: int = 25
) -> list[tuple[str, float]]:
    """Where the sending loop's time went, from py-spy's collapsed stacks: the call paths under `root`
    (up to three frames deep) and the leaf functions, each as a % of the samples under `root`."""
    paths: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        at = next((i for i, f in enumerate(frames) if f.startswith(root)), None)
        if at is None:
            continue
        n = int(count)
        total += n
        below = frames[at + 1 :]
        for depth in range(1, min(3, len(below)) + 1):
            paths[" > ".join(below[:depth])] += n
        leaves["self: " + frames[-1]] += n
    if not total:
        return []
    rows = [(k, 100 * n / total) for k, n in paths.most_common(top)]
    return rows + [(k, 100 * n / total) for k, n in leaves.most_common(10)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--leads", type=int, default=3000)
    p.add_argument("--transport", choices=["null", "smtp"], default="null")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="`run --batch` (default: sendguard's)")
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL", help="SQLite, both sides")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--log-level", default="INFO", help="the senders' log level (default INFO, sendguard's)")
    p.add_argument(
        "--url", help="PostgreSQL admin URL (else $SENDGUARD_TEST_PG_URL, else a throwaway cluster)"
    )
    p.add_argument("--min-ratio", type=float, default=None)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument(
        "--profile", type=Path, default=None, help="py-spy collapsed stacks of sender 0 (last run)"
    )
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--sink-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else "work",
        help="where the sink writes its Maildir (default /dev/shm: the sink stands in for a remote server,"
        " whose disk writes would not queue behind the sender's fsyncs on one disk); 'work' for the"
        " work directory, on the database's disk",
    )
    args = p.parse_args(argv)
    if args.senders < 1 or args.leads < args.senders or args.repeat < 1:
        p.error("need --senders >= 1, --leads >= --senders, --repeat >= 1")

    runs: list[dict[str, Any]] = []
    sampler = CpuSampler().start()
    with ExitStack() as stack:
        stack.callback(sampler.stop)
        work = Path(tempfile.mkdtemp(prefix="sendguard-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, work, True)
        admin = stack.enter_context(pg_server(args.url)) if args.backend == "postgresql" else None
        smtp_url, sink = "null://", None
        if args.transport == "smtp":
            from _harness import product_sink

            maildir = None
            if args.sink_dir != "work":
                maildir = Path(tempfile.mkdtemp(prefix="sendguard-bench-sink-", dir=args.sink_dir))
                stack.callback(shutil.rmtree, maildir, True)
            sink = stack.enter_context(product_sink(work, maildir))
            smtp_url = f"smtp://{sink[0]}:{sink[1]}"
        payload = sample_payload()
        for r in range(args.repeat):
            run_dir = work / f"run-{r}"
            run_dir.mkdir()
            db = fresh_database(args.backend, run_dir, admin)
            try:
                progress(f"run {r + 1}/{args.repeat}: seeding {args.leads} leads ({args.backend})")
                seed(db.url, args.leads, run_dir)
                profile = args.profile if (args.profile and r == args.repeat - 1) else None
                progress(f"run {r + 1}: {args.senders} sendguard sender(s), {args.transport} transport")
                sg = run_senders(db, args, smtp_url, run_dir, profile)
                progress(f"run {r + 1}: sendguard {sg['rate']}/s; database floor")
                if args.backend == "sqlite":
                    floor = db_floor_sqlite(Path(db.floor), args.leads, args.senders, args.synchronous)
                else:
                    floor = db_floor_pg(db.floor, args.leads, args.senders)
                one: dict[str, Any] = {"sendguard": sg, "floor_db": floor.as_dict()}
                one["ratio_db"] = round(sg["rate"] / floor.rate, 3)
                if sink is not None:
                    progress(f"run {r + 1}: smtplib floor")
                    sf = smtp_floor(sink[0], sink[1], args.leads, args.senders, payload)
                    one["floor_smtp"] = sf.as_dict()
                    one["ratio_smtp"] = round(sg["rate"] / sf.rate, 3)
                runs.append(one)
                progress(
                    f"run {r + 1}: " + ", ".join(f"{k}={v}" for k, v in one.items() if k.startswith("ratio"))
                )
            finally:
                db.drop()

    for one in runs:  # after the sampler's last sample, which every window ends before
        one["cpu"] = _cpu_of_run(sampler, one)

    def med(key: str, sub: str | None = None) -> float:
        return statistics.median(x[key][sub] if sub else x[key] for x in runs)

    result: dict[str, Any] = {
        "bench": "throughput",
        "backend": args.backend,
        "senders": args.senders,
        "leads": args.leads,
        "transport": args.transport,
        "sink_dir": args.sink_dir if args.transport == "smtp" else None,
        "synchronous": args.synchronous if args.backend == "sqlite" else "synchronous_commit=on",
        "batch": args.batch,
        "repeat": args.repeat,
        "sendguard_rate": med("sendguard", "rate"),
        "floor_db_rate": med("floor_db", "rate"),
        "ratio_db": med("ratio_db"),
        "ratio_db_range": summary([x["ratio_db"] for x in runs]),
    }
    if args.transport == "smtp":
        result["floor_smtp_rate"] = med("floor_smtp", "rate")
        result["ratio_smtp"] = med("ratio_smtp")
        result["ratio_smtp_range"] = summary([x["ratio_smtp"] for x in runs])
    result["cpu_ms_per_msg"] = _cpu_medians(runs)
    result["runs"] = runs
    print(json.dumps(result, default=str), flush=True)
    human = (
        f"{args.backend} {args.transport} x{args.senders}, {args.leads} leads, median of {args.repeat}: "
        f"sendguard {result['sendguard_rate']:.0f}/s, db floor {result['floor_db_rate']:.0f}/s "
        f"(ratio {result['ratio_db']:.2f})"
    )
    if args.transport == "smtp":
        human += f", smtplib floor {result['floor_smtp_rate']:.0f}/s (ratio {result['ratio_smtp']:.2f})"
    print(human)
    for phase, roles in result["cpu_ms_per_msg"].items():
        print(f"  CPU ms per message, {phase}: " + ", ".join(f"{k} {v}" for k, v in roles.items()))
    if args.profile and args.profile.exists():
        print(f"profile of sender 0 (last run, {args.profile}), % of the sending loop's samples:")
        for frame, share in summarize_profile(args.profile):
            print(f"  {share:5.1f}  {frame}")
    if args.min_ratio is not None:
        ratio = result["ratio_smtp"] if args.transport == "smtp" else result["ratio_db"]
        if ratio < args.min_ratio:
            print(f"FAIL: ratio {ratio:.2f} < {args.min_ratio}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
