"""Six real `sendguard run` processes race over one database: every lead gets exactly one message.

Each sender has its own lock file (so the file lock does not serialize them) and the DB lock admits
all six (SENDGUARD_MAX_SENDERS=6): only the claim protocol stands between them and a duplicate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.helpers import (
    CAMPAIGN,
    seed_campaign,
    sender_env,
    sql_rows,
    start_sender,
    status_counts,
    status_json,
    tail,
    wait_all,
)
from tests.smtp_peer import SmtpPeer

SENDERS = 6
LEADS = 2000


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_six_senders_send_each_lead_exactly_once(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    emails = seed_campaign(sendguard_env, LEADS, workdir=tmp_path / "seed")
    env = sender_env(sendguard_env, tmp_path / "unused.lock", smtp_url=smtp_peer.url, max_senders=SENDERS)

    logs = [tmp_path / f"sender{i}.log" for i in range(SENDERS)]
    procs = [
        start_sender(
            env, tmp_path / f"sender{i}.lock", ["--until-idle", "--interval", "0.2"], log_file=logs[i]
        )
        for i in range(SENDERS)
    ]
    codes = wait_all(procs, timeout=240)

    for i, code in enumerate(codes):
        assert code == 0, f"sender {i} exited {code}:\n{tail(logs[i])}"

    # What reached the wire: every lead exactly once, nobody else.
    per_recipient = smtp_peer.per_recipient()
    assert set(per_recipient) == set(emails)
    duplicates = {rcpt: n for rcpt, n in per_recipient.items() if n != 1}
    assert duplicates == {}, f"{len(duplicates)} recipients got more than one message"
    assert smtp_peer.count(CAMPAIGN) == LEADS

    # What the database says: all sent, nothing left in any other state.
    counts = status_counts(sendguard_env)
    assert counts == {"queued": 0, "sending": 0, "sent": LEADS, "failed": 0, "skipped": 0, "unknown": 0}

    # One live send_log row per lead, and the work really was shared: this tested concurrency.
    live = sql_rows(db_url, "SELECT count(*), count(DISTINCT lead_id) FROM send_log WHERE status = 'sent'")
    assert live == [(LEADS, LEADS)]
    per_instance = dict(sql_rows(db_url, "SELECT instance_id, count(*) FROM send_log GROUP BY instance_id"))
    assert len(per_instance) > 1, f"all sends came from one sender: {per_instance}"
    # Every sender shut down cleanly: stopped, DB-lock slot given back.
    assert [s["alive"] for s in status_json(sendguard_env)["senders"]] == [False] * SENDERS
    assert sql_rows(db_url, "SELECT count(*) FROM sender_slot WHERE instance_id IS NOT NULL") == [(0,)]

    received = smtp_peer.received()
    span = max(r.at for r in received) - min(r.at for r in received)
    rate = (len(received) - 1) / span if span > 0 else float("inf")
    backend = db_url.split(":", 1)[0].split("+", 1)[0]
    print(
        f"\n[concurrency/{backend}] {len(received)} messages from {SENDERS} senders in {span:.2f}s: "
        f"{rate:.0f} msgs/s at the peer; sends per sender: {sorted(per_instance.values(), reverse=True)}"
    )
