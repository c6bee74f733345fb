"""Shared helpers for the integration tests: seed a campaign through the CLI, start real senders,
read the outcome back (CLI `status --json`, and SQL for what the CLI does not show)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import text

from sender.db import make_engine
from tests.conftest import run_cli

CAMPAIGN = "it-campaign"
STATES = ("queued", "sending", "sent", "failed", "skipped", "unknown")


def lead_email(i: int) -> str:
    return f"lead{i:05d}@example.com"


def _ok(result: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def seed_campaign(
    env: dict[str, str],
    n_leads: int,
    *,
    workdir: Path,
    toml_extra: str = "",
    name: str = CAMPAIGN,
) -> list[str]:
    """Create, fill and start a campaign of `n_leads` leads through the CLI; returns their addresses."""
    workdir.mkdir(parents=True, exist_ok=True)
    campaign_file = workdir / f"{name}.toml"
    campaign_file.write_text(
        f'name = "{name}"\n'
        'from = "Ana Nowak <ana@example.com>"\n'
        f"{toml_extra}\n"
        "[[variants]]\n"
        'letter = "A"\n'
        "weight = 1\n"
        'subject = "Hello {{ first_name }}"\n'
        'body = "Hi {{ first_name }}, this is variant A."\n'
        "[[variants]]\n"
        'letter = "B"\n'
        "weight = 1\n"
        'subject = "Hi {{ first_name }}"\n'
        'body = "Hello {{ first_name }}, this is variant B."\n',
        encoding="utf-8",
    )
    emails = [lead_email(i) for i in range(n_leads)]
    leads_file = workdir / f"{name}-leads.csv"
    leads_file.write_text(
        "email,first_name\n" + "".join(f"{e},Lead{i}\n" for i, e in enumerate(emails)), encoding="utf-8"
    )
    _ok(run_cli(["campaign", "create", str(campaign_file)], env), "campaign create")
    imported = _ok(run_cli(["leads", "import", name, str(leads_file), "--json"], env, timeout=120), "import")
    result = json.loads(imported.stdout)
    assert result["enrolled"] == n_leads, result
    assert result["rejected"] == [], result
    _ok(run_cli(["campaign", "start", name], env), "campaign start")
    return emails


def sender_env(env: dict[str, str], lock_file: Path, **settings: object) -> dict[str, str]:
    """A copy of `env` for one sender: its own lock file plus SENDGUARD_<NAME> settings."""
    out = dict(env)
    out["SENDGUARD_LOCK_FILE"] = str(lock_file)
    for key, value in settings.items():
        out[f"SENDGUARD_{key.upper()}"] = str(value)
    return out


def start_sender(
    env: dict[str, str], lock_file: Path, extra_args: Iterable[str] = (), *, log_file: Path
) -> subprocess.Popen[bytes]:
    """Start `python -m sender run ...` as a real process; stdout+stderr go to `log_file` (appended)."""
    penv = dict(env)
    penv["SENDGUARD_LOCK_FILE"] = str(lock_file)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sender", "run", *extra_args],
            env=penv,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Wait for every process (one shared deadline); on timeout kill them all and fail."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    codes: list[int] = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        kill_all(procs)
        raise AssertionError(f"senders still running after {timeout:.0f}s (hang?)") from None
    return codes


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def status_json(env: dict[str, str]) -> dict:
    return json.loads(_ok(run_cli(["status", "--json"], env), "status").stdout)


def status_counts(env: dict[str, str], name: str = CAMPAIGN) -> dict[str, int]:
    """The campaign's enrollment counts from `sendguard status --json`."""
    campaigns = {c["name"]: c for c in status_json(env)["campaigns"]}
    return campaigns[name]["counts"]


def leads_by_status(env: dict[str, str], name: str = CAMPAIGN) -> dict[str, str]:
    """email -> enrollment status, from `sendguard leads list --json`."""
    rows = json.loads(_ok(run_cli(["leads", "list", name, "--json"], env, timeout=120), "leads list").stdout)
    return {row["email"]: row["status"] for row in rows}


def sql_rows(db_url: str, sql: str, params: dict | None = None) -> list[tuple]:
    engine = make_engine(db_url, readonly=True)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params or {})]
    finally:
        engine.dispose()


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or the deadline passes (never a bare sleep as synchronization)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


__all__ = [
    "CAMPAIGN",
    "STATES",
    "kill_all",
    "lead_email",
    "leads_by_status",
    "poll_until",
    "seed_campaign",
    "sender_env",
    "sql_rows",
    "start_sender",
    "status_counts",
    "status_json",
    "tail",
    "wait_all",
]
