"""A real `sendguard run --metrics-port 0` sends to a real SMTP peer with faults; the test scrapes
/metrics over HTTP and finds every outcome, the reaped stale claim, the queue gauges and the lock state."""

from __future__ import annotations

import os
import re
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from models import CampaignLead, Lead
from sender.db import make_engine
from tests.conftest import run_cli
from tests.integration._sendguard import TICK, counts, seed, senders, spawn, terminate, wait_for
from tests.integration.helpers import CAMPAIGN, lead_email, sender_env, tail
from tests.smtp_peer import SmtpPeer

LEADS = 6
STALE, REJECTED, DROPPED, DEFERRED = (lead_email(i) for i in range(4))


def faults(rcpt: str, phase: str, nth: int) -> str | None:
    if rcpt == REJECTED and phase == "rcpt":
        return "550"
    if rcpt == DROPPED and phase == "data_end":
        return "drop_after_data"  # accepted then the connection drops: unknown
    if rcpt == DEFERRED and phase == "rcpt" and nth == 1:
        return "452"
    return None


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_metrics_from_a_real_sender(sqlite_url: str, smtp_peer_factory, tmp_path: Path) -> None:
    from sender.migrate import upgrade

    upgrade(sqlite_url)
    seed(sqlite_url, LEADS, workdir=tmp_path / "seed")
    # A claim left by a sender that died before its gate: the reaper must hand it back (requeued).
    engine = make_engine(sqlite_url)
    cl, lead = CampaignLead.__table__, Lead.__table__
    with engine.begin() as conn:
        stale = update(cl).where(
            cl.c.lead_id == select(lead.c.id).where(lead.c.email == STALE).scalar_subquery()
        )
        conn.execute(stale.values(status="sending", claim_token="dead.1", claimed_by="dead", attempts=1,
                                  lease_expires_at=datetime.now(UTC) - timedelta(minutes=5)))  # fmt: skip
    engine.dispose()

    peer: SmtpPeer = smtp_peer_factory(faults)
    env = sender_env(
        {**os.environ, "SENDGUARD_DATABASE_URL": sqlite_url, "PYTHONUNBUFFERED": "1"},
        tmp_path / "sender.lock",
        smtp_url=peer.url,
        retry_base_seconds=0,
        smtp_timeout=5,
    )
    log_file = tmp_path / "sender.log"
    with senders() as procs:
        proc = spawn(procs, env, tmp_path / "sender.lock", [*TICK, "--metrics-port", "0"], log_file)
        port_seen: list[int] = []

        def metrics_port() -> bool:
            match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", tail(log_file, 200))
            if match:
                port_seen.append(int(match.group(1)))
            return bool(match) or proc.poll() is not None

        wait_for(metrics_port, 30, "the metrics endpoint", log_file)
        assert port_seen, f"sender exited {proc.returncode}:\n{tail(log_file)}"
        port = port_seen[0]

        def settled() -> bool:
            c = counts(sqlite_url)
            return c.get("queued", 0) == 0 and c.get("sending", 0) == 0

        wait_for(settled, 60, "every lead settled", log_file)

        def scraped_all() -> bool:
            # Each counter is bumped before its record commits: poll until the last one shows.
            s = scrape(port)
            return (
                sum(
                    sample(s, "sendguard_sends_total", campaign=CAMPAIGN, outcome=o) or 0
                    for o in ("sent", "failed", "unknown", "deferred")
                )
                == LEADS + 1
                and sample(s, "sendguard_unknown_pending", campaign=CAMPAIGN) == 1
            )

        wait_for(scraped_all, 30, "the scrape to show every send", log_file)
        s = scrape(port)
        assert terminate(proc, 30, log_file) == 0, tail(log_file)

    assert counts(sqlite_url) == {"sent": LEADS - 2, "failed": 1, "unknown": 1}
    assert sample(s, "sendguard_sends_total", campaign=CAMPAIGN, outcome="sent") == LEADS - 2
    assert sample(s, "sendguard_sends_total", campaign=CAMPAIGN, outcome="failed") == 1
    assert sample(s, "sendguard_sends_total", campaign=CAMPAIGN, outcome="unknown") == 1
    assert sample(s, "sendguard_sends_total", campaign=CAMPAIGN, outcome="deferred") == 1
    assert sample(s, "sendguard_leases_reaped_total", result="requeued") == 1
    assert sample(s, "sendguard_smtp_seconds_count", outcome="sent") == LEADS - 2
    assert (sample(s, "sendguard_claim_seconds_count") or 0) >= 1
    assert sample(s, "sendguard_queue_depth", campaign=CAMPAIGN) == 0
    assert sample(s, "sendguard_unknown_pending", campaign=CAMPAIGN) == 1
    assert sample(s, "sendguard_enrollments", campaign=CAMPAIGN, state="sent") == LEADS - 2
    assert sample(s, "sendguard_database_up") == 1
    assert sample(s, "sendguard_db_lock_active") == 1
    assert sample(s, "sendguard_db_lock_slot") == 0
    assert sample(s, "sendguard_file_lock_held") == 1
    assert (sample(s, "sendguard_last_tick_timestamp_seconds") or 0) > 0
    info = [labels for (name, labels) in s if name == "sendguard_sender_info"]
    assert len(info) == 1 and dict(info[0])["lock_file"] == str(tmp_path / "sender.lock")
    assert peer.per_recipient()[DEFERRED] == 1  # the 452 was at RCPT: nothing reached the peer then
    assert peer.count() == LEADS - 1  # the 550 never got a message in; the dropped one did


def test_metrics_port_in_use_exits_2(sqlite_url: str, tmp_path: Path) -> None:
    import socket

    from sender.migrate import upgrade

    upgrade(sqlite_url)
    env = {
        **os.environ,
        "SENDGUARD_DATABASE_URL": sqlite_url,
        "SENDGUARD_LOCK_FILE": str(tmp_path / "l.lock"),
    }
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli(
            ["run", "--once", "--dry-run", str(tmp_path / "out"), "--metrics-port", str(port)], env
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1:] == [
        f"sendguard: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]
