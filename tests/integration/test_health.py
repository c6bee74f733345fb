"""`sendguard health` against a real `sendguard run` subprocess on SQLite and PostgreSQL: healthy while
it runs, degraded while its breaker's auto-pause is unacknowledged, unhealthy once it is stopped
(SIGTERM: at once) or killed (SIGKILL: once its heartbeat is older than --heartbeat-within)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from sender.config import Settings
from sender.health import check_all
from tests.conftest import run_cli
from tests.integration._sendguard import TICK, instance_of, seed, senders, spawn, terminate, wait_for
from tests.integration.helpers import CAMPAIGN, sender_env
from tests.smtp_peer import SmtpPeer

SMTP_SECRET = "HealthSmtpPw-3c9"


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["health", "--heartbeat-within", "5", *args], env)


def verdict(db_url: str, within: float = 5) -> int:
    """The same checks in-process: cheap enough to poll (each CLI call is a Python start-up)."""
    settings = Settings(database_url=db_url)
    return check_all(settings, heartbeat_within=within, unknown_older_than_hours=24).exit_code


@pytest.mark.slow
def test_health_follows_a_real_sender_through_auto_pause_stop_and_kill(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    seed(db_url, 1, workdir=tmp_path / "seed")
    lock = tmp_path / "sender.lock"
    # The peer offers no AUTH, so a URL with credentials fails to log in: the auth breaker pauses.
    creds = smtp_peer.url.replace("smtp://", f"smtp://mailer:{SMTP_SECRET}@")
    env = sender_env(sendguard_env, lock, smtp_url=creds)
    log = tmp_path / "sender.log"

    never = health(env)
    assert never.returncode == 2 and "none has ever registered" in never.stdout, never.stdout

    with senders() as procs:
        first = spawn(procs, env, lock, TICK, log)
        wait_for(lambda: verdict(db_url) == 1, 90, "degraded (the auth breaker's auto-pause)", log)
        degraded = health(env, "--json")
        checks = {c["name"]: c for c in json.loads(degraded.stdout)["checks"]}
        assert (
            checks["sender"]["level"] == "ok" and checks["sender"]["reason"] == "1 live sender(s), 1 active"
        )
        assert checks["auto_paused"]["level"] == "degraded"
        assert f"campaign '{CAMPAIGN}' auto-paused by breaker:auth" in checks["auto_paused"]["reason"]
        assert SMTP_SECRET not in degraded.stdout + degraded.stderr

        acked = run_cli(["campaign", "ack", CAMPAIGN], env)
        assert acked.returncode == 0, acked.stderr
        healthy = health(env)
        assert healthy.returncode == 0 and healthy.stdout.startswith("healthy\n"), healthy.stdout

        assert terminate(first, 60, log) == 0
        stopped = health(env)
        assert stopped.returncode == 2, stopped.stdout
        instance = instance_of(db_url, first.pid)[0]
        assert f"unhealthy: no live sender (heartbeat within 5s): sender {instance} (" in stopped.stdout
        assert "stopped" in stopped.stdout.splitlines()[1]

        second = spawn(procs, env, lock, TICK, log)
        wait_for(lambda: verdict(db_url) == 0, 90, "healthy again after a restart", log)
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
        # No goodbye from a killed sender: its row still says running until the heartbeat ages out.
        wait_for(lambda: verdict(db_url, within=1) == 2, 60, "the stale heartbeat")
        killed = health(env, "--heartbeat-within", "1")
        line = killed.stdout.splitlines()[1]
        assert (
            line.startswith("unhealthy: no live sender (heartbeat within 1s): sender ")
            and "last heartbeat" in line
        )
