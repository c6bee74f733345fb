"""How exact is `campaign pause`? Time from the pause command returning to the sender's last transmission.

    .venv/bin/python bench/pause.py [--backend sqlite|postgresql] [--runs 5] [--leads 2000] [--peer-delay 0.01]

Each run: a fresh database and campaign, one real `sendguard run` delivering to an aiosmtpd peer in this
process that stamps every message with CLOCK_MONOTONIC (system-wide on Linux, so comparable with this
process's clock) at MAIL FROM (the transmission starts) and at the end of DATA (the payload is in).
Once the peer has `--warmup` messages, `sendguard campaign pause` runs as an operator's would (a
subprocess); when it returns we note the time, watch for `--observe` seconds, then stop the sender.

Per run: `started_after` (transmissions whose MAIL FROM came after the pause returned: must be 0),
`envelopes_after` (MAIL FROMs after the pause returned, delivered or not: the sender opens the next
envelope on a live connection while its gate commits, and resets it when the gate refuses; those carry
no message and count here only),
`finished_after` (messages whose payload completed after it: the one in flight, if any),
`last_after_s` (last payload end minus the pause's return; <= 0 when nothing was in flight),
`pause_cli_s` (how long the pause command took, process start-up included; `list_cli_s` is a
read-only `campaign list` run just before it, the start-up baseline), and whether the database
agrees with the peer (`sent` rows == messages received, nothing left `sending`).
Prints one JSON line (every run, plus min/median/max) and a human summary. Exit status 1 if any run
started a transmission after the pause returned or took 1 s or more to finish its last one.
`--in-process` pauses with `sender.campaigns.pause` (the function the CLI calls) in the bench process
instead, so the times count from the pause's commit, without the CLI's start-up and exit.
`--peer-delay` makes the peer take that long per message (an ordinary server's queue write), so the
pause usually lands while a message is on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    CAMPAIGN,
    cli,
    fresh_database,
    pg_server,
    progress,
    seed,
    sender_env,
    start_sender,
    summary,
)
from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402
from sqlalchemy import text  # noqa: E402

from sender import campaigns  # noqa: E402
from sender.clock import DatabaseClock  # noqa: E402
from sender.db import make_engine  # noqa: E402
from tests.smtp_peer import BoundController  # noqa: E402


@dataclass
class Stamp:
    rcpt: str
    mail_at: float
    data_at: float


class StampingPeer:
    """Accepts everything; records when each transmission started (MAIL) and completed (end of DATA)."""

    def __init__(self, delay: float, pipelining: bool = False) -> None:
        self.delay = delay
        self.pipelining = pipelining
        self.lock = threading.Lock()
        self.stamps: list[Stamp] = []
        self.mails: list[float] = []  # every MAIL FROM, delivered or reset
        self.controller = BoundController(self, server_hostname="pause-bench.test")

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.pipelining:
            return responses
        # As `sendguard sink`: PIPELINING offered, Nagle off (pipelined replies would wait 40 ms).
        assert server.transport is not None
        server.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        session.mail_at = time.monotonic()  # type: ignore[attr-defined]
        with self.lock:
            self.mails.append(session.mail_at)  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        stamp = Stamp(",".join(envelope.rcpt_tos), session.mail_at, time.monotonic())  # type: ignore[attr-defined]
        with self.lock:
            self.stamps.append(stamp)
        return "250 2.0.0 Ok"

    def count(self) -> int:
        with self.lock:
            return len(self.stamps)

    def snapshot(self) -> list[Stamp]:
        with self.lock:
            return list(self.stamps)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # polling with a deadline


def one_run(i: int, args: argparse.Namespace, work: Path, admin: str | None) -> dict[str, Any]:
    run_dir = work / f"run-{i}"
    run_dir.mkdir()
    db = fresh_database(args.backend, run_dir, admin)
    peer = StampingPeer(args.peer_delay, args.pipelining)
    peer.controller.start()
    sender = None
    try:
        seed(db.url, args.leads, run_dir)
        env = sender_env(db.url, peer.controller.url, senders=1, synchronous=args.synchronous)
        log = run_dir / "sender.log"
        sender = start_sender(env, run_dir / "sender.lock", ["--interval", "0.2"], log)
        wait_until(
            lambda: peer.count() >= args.warmup or sender.poll() is not None, 120, "the first messages"
        )
        if sender.poll() is not None:
            raise SystemExit(f"sender exited early:\n{log.read_text()[-2000:]}")
        t = time.monotonic()
        cli(["campaign", "list", "--json"], env)  # the same start-up, no write lock needed: a baseline
        baseline = time.monotonic() - t
        if args.in_process:
            pause_engine = make_engine(db.url)
            now = DatabaseClock(pause_engine).now()
            invoked = time.monotonic()
            campaigns.pause(pause_engine, CAMPAIGN, actor="bench", reason="bench", now=now)
            returned = time.monotonic()
            pause_engine.dispose()
        else:
            invoked = time.monotonic()
            done = cli(["campaign", "pause", CAMPAIGN, "--reason", "bench"], env)
            returned = time.monotonic()
            if done.returncode != 0:
                raise SystemExit(f"campaign pause failed: {done.stderr}")
        time.sleep(args.observe)  # an observation window, not synchronization: does anything still come?
        stamps = peer.snapshot()
        with peer.lock:
            mails = list(peer.mails)
        engine = make_engine(db.url, readonly=True)
        try:
            wait_until(
                lambda: _scalar(engine, "SELECT count(*) FROM campaign_lead WHERE status = 'sending'") == 0,
                30,
                "the sender to release its claims",
            )
            sent_rows = _scalar(engine, "SELECT count(*) FROM send_log WHERE status = 'sent'")
        finally:
            engine.dispose()
        sender.send_signal(signal.SIGTERM)
        sender.wait(timeout=30)
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        peer.controller.stop()
        db.drop()
    last = max(s.data_at for s in stamps)
    return {
        "received": len(stamps),
        "started_after": sum(1 for s in stamps if s.mail_at > returned),
        "envelopes_after": sum(1 for m in mails if m > returned),
        "finished_after": sum(1 for s in stamps if s.data_at > returned),
        "last_after_s": round(last - returned, 4),
        "pause_cli_s": round(returned - invoked, 4),
        "list_cli_s": round(baseline, 4),
        "db_agrees": sent_rows == len(stamps),
        "finished": len(stamps) >= args.leads,
    }


def _scalar(engine: Any, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--leads", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=20, help="messages received before the pause")
    p.add_argument("--peer-delay", type=float, default=0.01)
    p.add_argument("--observe", type=float, default=1.5, help="seconds watched after the pause returned")
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument("--pipelining", action="store_true", help="the peer offers PIPELINING (RFC 2920)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="pause with sender.campaigns.pause (what the CLI calls) in this process: times from the commit",
    )
    p.add_argument(
        "--url", help="PostgreSQL admin URL (else $SENDGUARD_TEST_PG_URL, else a throwaway cluster)"
    )
    args = p.parse_args(argv)

    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="sendguard-pause-"))
        stack.callback(shutil.rmtree, work, True)
        admin = stack.enter_context(pg_server(args.url)) if args.backend == "postgresql" else None
        for i in range(args.runs):
            progress(f"pause run {i + 1}/{args.runs} ({args.backend})")
            runs.append(one_run(i, args, work, admin))
            progress(f"  {runs[-1]}")
    valid = [r for r in runs if not r["finished"]]
    result: dict[str, Any] = {
        "bench": "pause",
        "backend": args.backend,
        "pause_by": "in-process call" if args.in_process else "CLI",
        "pipelining": args.pipelining,
        "runs": runs,
        "last_after_s": summary([r["last_after_s"] for r in valid]) if valid else None,
        "finished_after": summary([r["finished_after"] for r in valid]) if valid else None,
        "pause_cli_s": summary([r["pause_cli_s"] for r in runs]),
        "list_cli_s": summary([r["list_cli_s"] for r in runs]),
        "started_after_max": max(r["started_after"] for r in runs),
        "envelopes_after_max": max(r["envelopes_after"] for r in runs),
        "db_agrees": all(r["db_agrees"] for r in runs),
    }
    ok = bool(valid) and result["started_after_max"] == 0 and max(r["last_after_s"] for r in valid) < 1.0
    result["targets_met"] = ok and result["db_agrees"]
    print(json.dumps(result), flush=True)
    la = result["last_after_s"] or {}
    print(
        f"pause ({'in-process' if args.in_process else 'CLI'}, {args.backend}, {len(valid)}/{len(runs)} runs paused mid-campaign): transmissions started "
        f"after the pause returned: max {result['started_after_max']} (envelopes reset unsent: max "
        f"{result['envelopes_after_max']}); last message finished "
        f"{la.get('min')}/{la.get('median')}/{la.get('max')} s (min/median/max) after it; "
        f"pause command {result['pause_cli_s']['median']} s median (a read-only `campaign list` while "
        f"sending: {result['list_cli_s']['median']} s); db agrees with the peer: {result['db_agrees']}"
    )
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
