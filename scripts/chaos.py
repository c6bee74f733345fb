"""The chaos soak (issue 4): real senders, random SIGKILLs, random failpoints, random SMTP faults.

    .venv/bin/python scripts/chaos.py --backend sqlite|postgresql [--senders 8] [--leads 20000]
        [--duration 300] [--seed S] [--url ADMIN_URL] [--keep]

1. A fresh database (SQLite: a file in a temp dir; PostgreSQL: a new database on --url /
   $SENDGUARD_TEST_PG_URL, else on a throwaway cluster from scripts/pg-cluster.sh), seeded through the
   CLI: `db upgrade`, `campaign create`, `leads import`, `campaign start`.
2. An aiosmtpd peer on 127.0.0.1 (tests/smtp_peer.py) that records every message it accepts, keyed by
   the sender's deterministic Message-ID `<sg.cC.lL.sS@...>`, and injects random faults: 4xx/5xx/421 at
   RCPT, 4xx/5xx/421 after DATA, a dropped connection after the final dot, no reply at all (the client
   times out after the dot).
3. Chaos phase, for --duration seconds (or until every enrollment is terminal): N real `sendguard run`
   processes, each with its own lock file and a random SENDGUARD_FAILPOINTS (sender/failpoints.py:
   crash / stall / error at random protocol steps), SIGKILLed at random; a process that dies is
   restarted after a random short delay. At the end: SIGTERM, then SIGKILL for stragglers.
4. Calm phase: faults off, N `sendguard run --until-idle` without failpoints, until they exit (deadline).
5. Checks (`check()`): at most one message per (campaign, lead, step) at the peer; every enrollment
   terminal and no send_log row left in flight; every message the peer accepted recorded `sent` or
   `unknown` and every `sent` enrollment at the peer (else: lost); unknown <= ambiguous events (our
   SIGKILLs, failpoint crashes/errors after the gate, unexpected exits; peer drops, resets, silences).
   With `--pipelining` the peer offers PIPELINING, and the sender commits each gate while the previous
   reply is on its way and records it at the next hand-over: a death can then strand two gated
   sends, so each death counts twice.

Prints each violation on its own line, then ONE line of figures; exit 0 if every invariant held, 1 if
not, 2 on bad arguments. Logs and the database are deleted unless --keep or a violation.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is scripts/chaos.py: the product's modules and tests/ live at the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from scripts.pg_cluster import pg_cluster, psycopg_conninfo  # noqa: E402

Key = tuple[int, int, int]  # (campaign_id, lead_id, step): the at-most-once key

CAMPAIGN = "chaos"
TERMINAL = ("sent", "failed", "skipped", "unknown")
# Failpoints after which a death can leave a transmission whose fate is unknown (the gate committed).
POST_GATE = ("after_gate", "mid_data", "after_250", "while_recording")
FAILPOINTS = ("after_claim", "after_reserve", *POST_GATE)
MESSAGE_ID = re.compile(r"<sg\.c(\d+)\.l(\d+)\.s(\d+)@[^>]*>")
FAILPOINT_LINE = re.compile(r"failpoint (\w+): (crash|error)")


class Usage(Exception):
    """Bad arguments or environment: one line, exit 2."""


# --- the invariant checker -------------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """What the peer saw and what the database says, gathered after the calm phase."""

    peer: collections.Counter[Key]  # messages the SMTP peer accepted, per key
    foreign: int  # accepted messages without a sendguard Message-ID
    enrollments: dict[Key, str]  # campaign_lead status per key
    sent_rows: collections.Counter[Key]  # send_log rows in status `sent`, per key
    in_flight_rows: int  # send_log rows still `reserved` or `transmitting`
    ambiguous: int  # events that may legitimately leave an `unknown`
    campaign_status: str = "active"  # a paused campaign would leave enrollments queued
    last_event: str = ""  # the campaign's latest event (why it was paused)


@dataclasses.dataclass
class Verdict:
    duplicates: int
    lost: int
    stuck: int
    unknown: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


def check(obs: Observed) -> Verdict:
    """The soak's invariants; every violation is one line naming the key(s)."""
    violations: list[str] = []

    def sample(keys: Iterable[Key]) -> str:
        keys = sorted(keys)
        shown = ", ".join(f"c{c}.l{lead}.s{s}" for c, lead, s in keys[:5])
        return shown + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    dup_peer = {k: n for k, n in obs.peer.items() if n > 1}
    dup_rows = {k: n for k, n in obs.sent_rows.items() if n > 1}
    duplicates = sum(n - 1 for n in dup_peer.values()) + sum(n - 1 for n in dup_rows.values())
    if dup_peer:
        violations.append(
            f"VIOLATION duplicate: {len(dup_peer)} keys reached the SMTP peer more than once: {sample(dup_peer)}"
        )
    if dup_rows:
        violations.append(
            f"VIOLATION duplicate: {len(dup_rows)} keys have more than one `sent` send_log row: {sample(dup_rows)}"
        )
    if obs.foreign:
        violations.append(
            f"VIOLATION foreign: the peer accepted {obs.foreign} messages without a sendguard Message-ID"
        )
        duplicates += obs.foreign

    if obs.campaign_status != "active":
        violations.append(f"VIOLATION campaign {obs.campaign_status}: {obs.last_event}")
    stuck_keys = [k for k, s in obs.enrollments.items() if s not in TERMINAL]
    if stuck_keys:
        violations.append(f"VIOLATION not terminal: {len(stuck_keys)} enrollments: {sample(stuck_keys)}")
    if obs.in_flight_rows:
        violations.append(
            f"VIOLATION in flight: {obs.in_flight_rows} send_log rows still reserved/transmitting"
        )
    stuck = len(stuck_keys) + obs.in_flight_rows

    # Lost: the recipient got it but we do not know (we may resend or under-report), or we believe it
    # was delivered and it never arrived.
    unrecorded = [k for k in obs.peer if obs.enrollments.get(k) not in ("sent", "unknown")]
    phantom = [k for k, s in obs.enrollments.items() if s == "sent" and k not in obs.peer]
    if unrecorded:
        violations.append(
            f"VIOLATION lost: {len(unrecorded)} messages accepted by the peer are not recorded sent/unknown: {sample(unrecorded)}"
        )
    if phantom:
        violations.append(
            f"VIOLATION lost: {len(phantom)} enrollments recorded sent never reached the peer: {sample(phantom)}"
        )
    lost = len(unrecorded) + len(phantom)

    unknown = sum(1 for s in obs.enrollments.values() if s == "unknown")
    if unknown > obs.ambiguous:
        violations.append(
            f"VIOLATION unknown: {unknown} unknown enrollments but only {obs.ambiguous} ambiguous events"
        )
    return Verdict(duplicates, lost, stuck, unknown, violations)


def parse_message_id(value: str) -> Key | None:
    m = MESSAGE_ID.search(value)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


# --- the SMTP peer's faults ------------------------------------------------------------------------

# Per-attempt odds of each fault, by phase (tests/smtp_peer.py actions).
RCPT_FAULTS = {"452": 0.015, "451": 0.005, "550": 0.005, "421": 0.01}
DATA_FAULTS = {
    "452": 0.015,
    "554_policy": 0.003,
    "421": 0.005,
    "drop_after_data": 0.006,  # stored, then the connection closes without a reply
    "reset_after_data": 0.004,  # stored, then a TCP RST
    "hang_after_data": 0.003,  # stored, then no reply until the client times out
}
# Faults after which the client cannot know whether the message was accepted (it was).
AMBIGUOUS_FAULTS = ("drop_after_data", "reset_after_data", "hang_after_data")


class Faults:
    """The peer's fault hook: random faults while `on`, counted by action (runs in the peer's thread)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.on = True
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, recipient: str, phase: str, nth: int) -> str | None:
        with self._lock:
            if not self.on:
                return None
            table = RCPT_FAULTS if phase == "rcpt" else DATA_FAULTS
            roll = self.rng.random()
            for action, odds in table.items():
                if roll < odds:
                    self.counts[action] += 1
                    return action
                roll -= odds
            return None

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def ambiguous(self) -> int:
        with self._lock:
            return sum(self.counts[a] for a in AMBIGUOUS_FAULTS)


# --- the database ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Database:
    backend: str
    url: str
    cleanup: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    kept: str = ""  # what --keep leaves running besides the files

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as exc:  # cleanup must not hide the verdict
                print(f"chaos: cleanup failed: {exc}", file=sys.stderr)


def open_database(args: argparse.Namespace, workdir: Path, keep: Callable[[], bool]) -> Database:
    if args.backend == "sqlite":
        return Database("sqlite", f"sqlite:///{workdir}/chaos.db")

    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    db = Database("postgresql", "")
    admin = args.url or os.environ.get("SENDGUARD_TEST_PG_URL")
    if not admin:
        values = pg_cluster("start")
        admin, cluster_dir = values["SENDGUARD_TEST_PG_URL"], values["SENDGUARD_TEST_PG_DIR"]
        db.cleanup.append(lambda: None if keep() else pg_cluster("stop", cluster_dir))
        db.kept = f"PostgreSQL cluster {cluster_dir} (stop with: scripts/pg-cluster.sh stop {cluster_dir})"
    if not make_url(admin).drivername.startswith("postgresql"):
        raise Usage(f"--url must be a PostgreSQL URL, got {make_url(admin).drivername}")
    name = f"sendguard_chaos_{os.getpid()}"
    with psycopg.connect(psycopg_conninfo(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        if keep():
            return
        with psycopg.connect(psycopg_conninfo(admin), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    db.cleanup.append(drop)
    db.url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    return db


def cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sender", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"sendguard {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-800:]}"
        )
    return result.stdout


def seed(env: dict[str, str], leads: int, workdir: Path) -> None:
    """Through the CLI, as an operator would: a two-variant campaign of `leads` leads, started."""
    campaign_file = workdir / "chaos.toml"
    campaign_file.write_text(
        f'name = "{CAMPAIGN}"\nfrom = "Chaos Monkey <chaos@example.com>"\n'
        '[[variants]]\nletter = "A"\nweight = 1\nsubject = "Hello {{ first_name }}"\n'
        'body = "Hi {{ first_name }}, variant A."\n'
        '[[variants]]\nletter = "B"\nweight = 1\nsubject = "Hi {{ first_name }}"\n'
        'body = "Hello {{ first_name }}, variant B."\n'
        # The circuit breakers would pause the campaign on the very faults injected here (unknowns,
        # 5xx); the soak checks the protocol underneath them. A guard firing is counted (`prevented`).
        "[breakers]\nduplicate = false\nhard_failures = 0\nauth = false\nunknowns = 0\n",
        encoding="utf-8",
    )
    leads_file = workdir / "leads.csv"
    with leads_file.open("w", encoding="utf-8") as f:
        f.write("email,first_name\n")
        for i in range(leads):
            f.write(f"lead{i:06d}@example.com,Lead{i}\n")
    cli(["db", "upgrade"], env)
    cli(["campaign", "create", str(campaign_file)], env)
    cli(["leads", "import", CAMPAIGN, str(leads_file), "--json"], env, timeout=600)
    cli(["campaign", "start", CAMPAIGN], env)


def _sql(url: str, statement: str) -> list[tuple]:
    from sqlalchemy import text

    from sender.db import make_engine

    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(statement))]
    finally:
        engine.dispose()


def pending(url: str) -> int:
    """Enrollments not yet terminal (the chaos phase ends early once there are none)."""
    return int(_sql(url, "SELECT count(*) FROM campaign_lead WHERE status IN ('queued', 'sending')")[0][0])


def observe(
    url: str, peer_keys: collections.Counter[Key], foreign: int, ambiguous: int
) -> tuple[Observed, dict[str, int]]:
    enrollments = {
        (c, lead, s): status
        for c, lead, s, status in _sql(url, "SELECT campaign_id, lead_id, step, status FROM campaign_lead")
    }
    sent_rows: collections.Counter[Key] = collections.Counter(
        {
            (c, lead, s): n
            for c, lead, s, n in _sql(
                url,
                "SELECT campaign_id, lead_id, step, count(*) FROM send_log WHERE status = 'sent' GROUP BY campaign_id, lead_id, step",
            )
        }
    )
    in_flight = int(
        _sql(url, "SELECT count(*) FROM send_log WHERE status IN ('reserved', 'transmitting')")[0][0]
    )
    prevented = int(_sql(url, "SELECT count(*) FROM campaign_event WHERE kind = 'duplicate_prevented'")[0][0])
    ((status,),) = _sql(url, f"SELECT status FROM campaign WHERE name = '{CAMPAIGN}'")  # noqa: S608 (a constant)
    events = _sql(url, "SELECT kind, actor, reason FROM campaign_event ORDER BY id DESC LIMIT 1")
    last_event = " ".join(str(v) for v in events[0] if v) if events else ""
    counts = collections.Counter(enrollments.values())
    figures = {s: counts.get(s, 0) for s in TERMINAL} | {"prevented": prevented}
    obs = Observed(peer_keys, foreign, enrollments, sent_rows, in_flight, ambiguous, status, last_event)
    return obs, figures


# --- the senders -----------------------------------------------------------------------------------


def random_failpoints(rng: random.Random, lease: float) -> str:
    """0-3 failpoints at random protocol steps; mostly crashes, some stalls (past the lease) and errors."""
    parts = []
    for name in rng.sample(FAILPOINTS, rng.randint(0, 3)):
        kind = rng.choices(["crash", "stall", "error"], weights=[70, 15, 15])[0]
        pct = rng.choice(["0.1", "0.2", "0.5", "1"])
        if kind == "stall":
            parts.append(f"{name}={pct}%1*stall({rng.uniform(0.3, 2 * lease):.1f})")
        else:
            parts.append(f"{name}={pct}%{kind}")
    return ";".join(parts)


try:  # looked up here, not in the child: between fork and exec only a plain C call is safe
    import ctypes

    _PRCTL: Callable[..., int] | None = ctypes.CDLL(None).prctl
except (OSError, AttributeError):  # not Linux: the finally blocks still kill senders on a clean exit
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: SIGKILL it when this script dies, however it dies (PR_SET_PDEATHSIG), so a
    killed soak never leaves senders running against a database and a peer that are gone."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@dataclasses.dataclass
class Life:
    """One `sendguard run` process."""

    proc: subprocess.Popen[bytes]
    log: Path
    failpoints: str
    started: float
    killed: bool = False  # by our SIGKILL
    terminated: bool = False  # by our SIGTERM at the end of the chaos phase
    active: bool = False  # seen holding a DB-lock slot (past start-up)

    def is_active(self) -> bool:
        if not self.active:
            self.active = "active in slot" in self.log.read_text(errors="replace")
        return self.active


@dataclasses.dataclass
class Tally:
    lives: int = 0
    kills: int = 0  # SIGKILLs we sent to a live sender
    crashes: int = 0  # failpoint crashes (exit 86)
    fp_errors: int = 0  # failpoint errors seen in the logs
    post_gate: int = 0  # failpoint crashes/errors at a step after the gate
    other_exits: int = 0  # deaths the soak did not cause (unexpected errors): worth a look in the logs
    exits: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)


class Fleet:
    def __init__(self, n: int, env: dict[str, str], workdir: Path, rng: random.Random, lease: float) -> None:
        self.n, self.env, self.workdir, self.rng, self.lease = n, env, workdir, rng, lease
        self.lives: list[Life | None] = [None] * n
        self.restart_at = [0.0] * n
        self.tally = Tally()
        self.count = 0

    def start(self, i: int, args: list[str], failpoints: str) -> None:
        self.count += 1
        log = self.workdir / "logs" / f"sender{i}-{self.count:05d}.log"
        env = dict(self.env)
        env["SENDGUARD_LOCK_FILE"] = str(self.workdir / f"sender{i}.lock")
        env.pop("SENDGUARD_FAILPOINTS", None)
        if failpoints:
            env["SENDGUARD_FAILPOINTS"] = failpoints
            env["SENDGUARD_FAILPOINTS_SEED"] = str(self.rng.getrandbits(31))
        with log.open("wb") as out:
            out.write(f"chaos: SENDGUARD_FAILPOINTS={failpoints!r}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "sender", "run", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.lives[i] = Life(proc, log, failpoints, time.monotonic())
        self.tally.lives += 1

    def reap(self, i: int) -> bool:
        """If sender i has exited, account for how it died; True if it did."""
        life = self.lives[i]
        if life is None or life.proc.poll() is None:
            return False
        code = life.proc.returncode
        self.tally.exits[code] += 1
        if code == 2:
            raise RuntimeError(f"sender exited 2 (bad input?): {life.log.read_text(errors='replace')[-800:]}")
        fired = FAILPOINT_LINE.findall(life.log.read_text(errors="replace"))
        for name, kind in fired:
            if kind == "crash":
                self.tally.crashes += 1
            else:
                self.tally.fp_errors += 1
            if name in POST_GATE:
                self.tally.post_gate += 1
        if not fired and code != 0 and not life.killed and not (life.terminated and code == -signal.SIGTERM):
            self.tally.other_exits += 1
        self.lives[i] = None
        return True

    def kill(self, i: int) -> None:
        life = self.lives[i]
        if life is not None and life.proc.poll() is None:
            life.proc.send_signal(signal.SIGKILL)
            life.proc.wait(timeout=30)
            if life.proc.returncode == -signal.SIGKILL:  # not one that had exited by itself just before
                self.tally.kills += 1
                life.killed = True

    def working(self) -> list[int]:
        """Senders running and past start-up (they took a DB-lock slot)."""
        return [
            i
            for i, life in enumerate(self.lives)
            if life is not None and life.proc.poll() is None and life.is_active()
        ]

    def stop(self, grace: float) -> None:
        """SIGTERM every sender (they finish the message in flight and release their claims); SIGKILL
        whoever is still running after `grace` seconds."""
        for life in self.lives:
            if life is not None and life.proc.poll() is None:
                life.terminated = True
                life.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for i, life in enumerate(self.lives):
            if life is None:
                continue
            try:
                life.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(i)
            self.reap(i)

    def kill_all(self) -> None:
        for i in range(self.n):
            self.kill(i)


def chaos_phase(fleet: Fleet, args: argparse.Namespace, url: str, rng: random.Random) -> float:
    """Run the fleet through random deaths for args.duration seconds; returns the seconds it ran."""
    run_args = ["--interval", "0.2"]
    for i in range(fleet.n):
        fleet.start(i, run_args, random_failpoints(rng, fleet.lease))
    # The clock starts once a sender works: on a loaded machine Python start-up alone can take many
    # seconds, and a short soak would otherwise be over before anything was sent.
    startup_deadline = time.monotonic() + 180
    while not fleet.working():
        if time.monotonic() > startup_deadline:
            raise RuntimeError("no sender took a DB-lock slot within 180 s of start-up")
        for i in range(fleet.n):
            if fleet.reap(i):
                fleet.start(i, run_args, random_failpoints(rng, fleet.lease))
        time.sleep(0.1)  # polling the logs for the first "active in slot"
    begin = time.monotonic()
    end = begin + args.duration
    next_kill = begin + rng.expovariate(1 / args.kill_every)
    next_progress = begin + 2.0
    while (now := time.monotonic()) < end:
        for i in range(fleet.n):
            if fleet.lives[i] is None:
                if now >= fleet.restart_at[i]:
                    fleet.start(i, run_args, random_failpoints(rng, fleet.lease))
            elif fleet.reap(i):
                fleet.restart_at[i] = now + rng.uniform(0.0, args.max_restart_delay)
        if now >= next_kill:
            # A sender past its start-up: killing a process still importing Python tests nothing.
            candidates = fleet.working()
            if candidates:
                fleet.kill(rng.choice(candidates))
            next_kill = now + rng.expovariate(1 / args.kill_every)
        if now >= next_progress:
            next_progress = now + 2.0
            if pending(url) == 0:
                break  # every enrollment is terminal: nothing left to disturb
        time.sleep(0.05)  # the monitor's cadence, not synchronisation
    elapsed = time.monotonic() - begin
    fleet.stop(grace=args.lease + args.smtp_timeout + 2 * args.lease + 10)
    return elapsed


def calm_phase(fleet: Fleet, timeout: float) -> list[str]:
    """No faults: N senders without failpoints `--until-idle`; problems as violation lines."""
    for i in range(fleet.n):
        fleet.start(i, ["--until-idle", "--interval", "0.2"], "")
    deadline = time.monotonic() + timeout
    problems = []
    for i, life in enumerate(fleet.lives):
        assert life is not None
        try:
            code = life.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            fleet.kill(i)
            problems.append(
                f"VIOLATION calm phase: sender {i} still running after {timeout:.0f}s ({life.log})"
            )
            continue
        if code != 0:
            problems.append(f"VIOLATION calm phase: sender {i} exited {code} ({life.log})")
        fleet.lives[i] = None
    return problems


# --- main ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise Usage(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description="sendguard chaos soak", add_help=True)
    p.add_argument("--backend", choices=["sqlite", "postgresql"], required=True)
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--leads", type=int, default=20000)
    p.add_argument("--duration", type=float, default=300, help="seconds of chaos (default 300)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--url", help="PostgreSQL admin URL (default $SENDGUARD_TEST_PG_URL, else a throwaway cluster)"
    )
    p.add_argument("--lease", type=float, default=3.0, help="SENDGUARD_LEASE_SECONDS (default 3)")
    p.add_argument("--smtp-timeout", type=float, default=3.0, help="SENDGUARD_SMTP_TIMEOUT (default 3)")
    p.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs (default 3)")
    p.add_argument("--max-restart-delay", type=float, default=1.5)
    p.add_argument(
        "--calm-timeout",
        type=float,
        default=None,
        help="deadline of the calm phase (default: 600 s or 0.1 s a lead)",
    )
    p.add_argument("--keep", action="store_true", help="keep the logs and the database")
    p.add_argument(
        "--pipelining", action="store_true", help="the peer offers PIPELINING (RFC 2920), as real servers do"
    )
    args = p.parse_args(argv)
    for name in ("senders", "leads"):
        if getattr(args, name) < 1:
            raise Usage(f"--{name} must be at least 1")
    if args.calm_timeout is None:
        args.calm_timeout = max(600.0, args.leads / 10)
    for name in ("duration", "lease", "smtp_timeout", "kill_every", "calm_timeout"):
        if not getattr(args, name) > 0:
            raise Usage(f"--{name.replace('_', '-')} must be positive")
    if args.max_restart_delay < 0:
        raise Usage("--max-restart-delay must be >= 0")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except Usage as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, Ctrl-C's cousin) unwinds through the finally blocks: senders killed,
    # peer stopped, database and cluster removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(args)
    except Usage as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # seeding or the cluster failed: nothing was checked
        print(f"chaos: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from tests.smtp_peer import SmtpPeer

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"sendguard-chaos-{args.backend}-"))
    (workdir / "logs").mkdir()
    keep = {"yes": args.keep}
    db = open_database(args, workdir, lambda: keep["yes"])
    faults = Faults(random.Random(rng.getrandbits(32)))
    peer = SmtpPeer(faults, pipelining=args.pipelining).start()
    fleet: Fleet | None = None
    try:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("SENDGUARD_") and name not in ("SENDGUARD_DEBUG",):
                del env[name]
        env.update(
            SENDGUARD_DATABASE_URL=db.url,
            SENDGUARD_SMTP_URL=peer.url,
            SENDGUARD_MAX_SENDERS=str(args.senders),
            SENDGUARD_LEASE_SECONDS=str(args.lease),
            SENDGUARD_SMTP_TIMEOUT=str(args.smtp_timeout),
            SENDGUARD_RETRY_BASE_SECONDS="0.2",
            SENDGUARD_MAX_ATTEMPTS="5",
            PYTHONUNBUFFERED="1",
        )
        seed(env, args.leads, workdir)

        fleet = Fleet(args.senders, env, workdir, rng, args.lease)
        elapsed = chaos_phase(fleet, args, db.url, rng)
        chaos_accepted = peer.count()
        faults.on = False
        calm_started = time.monotonic()
        problems = calm_phase(fleet, args.calm_timeout)
        calm = time.monotonic() - calm_started

        peer_keys: collections.Counter[Key] = collections.Counter()
        foreign = 0
        for r in peer.received():
            key = parse_message_id(r.message_id)
            if key is None:
                foreign += 1
            else:
                peer_keys[key] += 1
        t = fleet.tally
        # Any death may strand a gated send (the reaper then marks it unknown): our SIGKILLs, failpoint
        # crashes/errors after the gate, and unexpected exits; plus the peer's faults after the dot.
        # With PIPELINING a death may strand two: the send whose reply was on its way, and the one
        # before it (answered, not yet recorded) or the next (gated, not yet transmitted).
        deaths = (t.kills + t.post_gate + t.other_exits) * (2 if args.pipelining else 1)
        ambiguous = deaths + faults.ambiguous()
        obs, figures = observe(db.url, peer_keys, foreign, ambiguous)
        verdict = check(obs)
        violations = problems + verdict.violations
        if peer.errors:
            violations.append(f"VIOLATION peer: fault hook errors {peer.errors[:3]}")
        for line in violations:
            print(line)
        result = "PASS" if not violations else "FAIL"
        if violations:
            keep["yes"] = True
        print(
            f"chaos backend={args.backend} pipelining={'yes' if args.pipelining else 'no'} senders={args.senders} leads={args.leads} duration={args.duration:g}s"
            f" elapsed={elapsed:.0f}s calm={calm:.0f}s seed={args.seed} sent={figures['sent']} failed={figures['failed']}"
            f" skipped={figures['skipped']} unknown={figures['unknown']} accepted={sum(peer_keys.values())}"
            f" chaos_accepted={chaos_accepted} lives={t.lives} kills={t.kills} crashes={t.crashes}"
            f" fp_errors={t.fp_errors} other_exits={t.other_exits} smtp_faults={faults.total()} ambiguous={ambiguous}"
            f" prevented={figures['prevented']} duplicates={verdict.duplicates} lost={verdict.lost}"
            f" stuck={verdict.stuck} result={result}",
            flush=True,
        )
        if keep["yes"]:
            print(f"chaos: kept logs and database in {workdir} ({db.url.split('@')[-1]})", file=sys.stderr)
            if db.kept:
                print(f"chaos: kept {db.kept}", file=sys.stderr)
        return 0 if not violations else 1
    finally:
        if fleet is not None:
            fleet.kill_all()
        peer.stop()
        db.close()
        if not keep["yes"]:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
