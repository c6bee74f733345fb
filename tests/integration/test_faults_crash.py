"""The fault catalogue, crash half: a real `sendguard run` killed (failpoint `crash`, i.e. os._exit) at
each step of the claim-and-send path, then a second sender that takes over. Each case asserts the
end state (S sent, F failed, R retried then sent, U unknown) and what the SMTP peer actually received.

| crash at          | left behind                                  | end | peer |
|-------------------|----------------------------------------------|-----|------|
| after_claim       | nothing: the claim transaction rolled back   | R   | 1    |
| after_reserve     | sending + send_log reserved                  | R   | 1    |
| after_gate        | send_log transmitting, no connection made    | U   | 0    |
| mid_data          | transmitting, half a DATA, no final dot      | U   | 0    |
| after_250         | transmitting, the peer has the message       | U   | 1    |
| while_recording   | as after_250: the record never committed     | U   | 1    |

after_gate is U, not R: the database knows only that the gate was passed, not how far the SMTP
transaction got, so the reaper must assume a delivery may have happened. The peer saw no connection,
which proves nothing left here, but the sender cannot prove it to itself after a crash.
while_recording is U for the same reason as after_250: a crash before COMMIT undoes the record's
UPDATEs (PostgreSQL rolls back the dead session, SQLite ignores the uncommitted WAL frames), so the
database is exactly as after_250 and the reaper cannot tell that the 250 arrived. Never a resend.

Plus a sender frozen (SIGSTOP) past its lease while another takes over, then thawed: the fenced zombie
transmits nothing. And the control: the claim statement with its `status = 'queued'` re-check removed,
two claimers racing, and the double-claim assertion that the other tests rely on firing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text

from sender import claim as q
from sender import failpoints as fp
from sender.clock import DatabaseClock
from sender.db import make_engine
from tests.conftest import run_cli
from tests.integration._sendguard import (
    TICK,
    enrollments,
    seed,
    send_log,
    senders,
    spawn,
    wait_exit,
    wait_for,
)
from tests.integration.helpers import CAMPAIGN, sender_env, sql_rows
from tests.smtp_peer import SmtpPeer

LEASE_SECONDS = 2  # the takeover waits one lease: short, but far above a tick (0.2 s)


class PhaseLog:
    """SmtpPeer fault hook that injects nothing and records which phases each recipient reached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, rcpt: str, phase: str, nth: int) -> str | None:
        with self._lock:
            self.seen.append((rcpt, phase))
        return None

    def phases(self, rcpt: str) -> list[str]:
        with self._lock:
            return [p for r, p in self.seen if r == rcpt]


def _env(base: dict[str, str], tmp_path: Path, peer: SmtpPeer, **extra: object) -> dict[str, str]:
    return sender_env(
        base, tmp_path / "sender.lock", smtp_url=peer.url, lease_seconds=LEASE_SECONDS, max_senders=1, **extra
    )


def _crash_at(env: dict[str, str], point: str) -> subprocess.CompletedProcess[str]:
    """Run a sender with `point` set to crash once; assert it died there and nowhere else."""
    crashing = dict(env, SENDGUARD_FAILPOINTS=f"{point}=1*crash")
    result = run_cli(["run", "--until-idle", *TICK], crashing, timeout=60)
    assert result.returncode == fp.CRASH_EXIT_CODE, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert result.stderr.splitlines()[-1] == f"failpoint {point}: crash", result.stderr[-3000:]
    return result


def _take_over(env: dict[str, str]) -> None:
    """A healthy sender: waits out the dead one's slot and claim leases, reaps, and finishes the queue."""
    result = run_cli(["run", "--until-idle", *TICK], env, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]


def _log(db_url: str, email: str) -> list[tuple[str, str | None]]:
    """(status, smtp_reply) of every send_log row of one lead, in order."""
    return sql_rows(
        db_url,
        "SELECT sl.status, sl.smtp_reply FROM send_log AS sl JOIN lead AS l ON l.id = sl.lead_id"
        " WHERE l.email = :email ORDER BY sl.id",
        {"email": email},
    )


# Each case: the failpoint, the state the crash must leave (enrollment status, attempts, send_log
# statuses, messages at the peer), then the end state after a takeover (status, reason, attempts,
# send_log statuses, messages at the peer). Checked on both backends.
Case = tuple[str, tuple[str, int, list[str], int], tuple[str, str | None, int, list[str], int]]
CASES: list[Case] = [
    (fp.AFTER_CLAIM, ("queued", 0, [], 0), ("sent", None, 1, ["sent"], 1)),
    (fp.AFTER_RESERVE, ("sending", 1, ["reserved"], 0), ("sent", None, 2, ["deferred", "sent"], 1)),
    (fp.AFTER_GATE, ("sending", 1, ["transmitting"], 0), ("unknown", "lease_expired_during_transmission", 1, ["unknown"], 0)),
    (fp.MID_DATA, ("sending", 1, ["transmitting"], 0), ("unknown", "lease_expired_during_transmission", 1, ["unknown"], 0)),
    (fp.AFTER_250, ("sending", 1, ["transmitting"], 1), ("unknown", "lease_expired_during_transmission", 1, ["unknown"], 1)),
    (fp.WHILE_RECORDING, ("sending", 1, ["transmitting"], 1), ("unknown", "lease_expired_during_transmission", 1, ["unknown"], 1)),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "crashed", "final"), CASES, ids=[f"{c[0]}-{'R' if c[2][0] == 'sent' else 'U'}" for c in CASES]
)
def test_crash_at_failpoint_then_takeover(
    point: str,
    crashed: tuple[str, int, list[str], int],
    final: tuple[str, str | None, int, list[str], int],
    db_url: str,
    sendguard_env: dict[str, str],
    smtp_peer_factory: Callable[..., SmtpPeer],
    tmp_path: Path,
) -> None:
    phases = PhaseLog()
    peer = smtp_peer_factory(phases)
    (email,) = seed(db_url, 1, workdir=tmp_path / "seed")
    env = _env(sendguard_env, tmp_path, peer)

    _crash_at(env, point)
    status, attempts, log_states, received = crashed
    ((now_status, _, now_attempts),) = enrollments(db_url).values()
    assert (now_status, now_attempts) == (status, attempts)
    assert [s for s, _ in _log(db_url, email)] == log_states
    assert peer.count() == received
    if point == fp.AFTER_GATE:
        assert peer.connections() == 0  # the crash came before connecting: not a byte left
    if point == fp.MID_DATA:
        # The envelope was accepted and DATA begun, but the peer never saw the end of the data.
        assert phases.phases(email) == ["rcpt"]
    if point == fp.WHILE_RECORDING:
        # The record's UPDATEs ran but never committed: the database is as after_250.
        assert sql_rows(db_url, "SELECT count(*) FROM send_log WHERE finished_at IS NOT NULL") == [(0,)]

    _take_over(env)
    status, reason, attempts, log_states, received = final
    assert enrollments(db_url) == {email: (status, reason, attempts)}
    log = _log(db_url, email)
    assert [s for s, _ in log] == log_states
    if point == fp.AFTER_RESERVE:
        assert log[0][1] == "lease expired before transmission"  # the reaper's, not an SMTP reply
    # The peer: never more than one copy, and exactly the count the table says.
    assert peer.count() == received
    assert all(n == 1 for n in peer.per_recipient().values())
    # Nothing left in flight on either table.
    assert sql_rows(db_url, "SELECT count(*) FROM send_log WHERE status IN ('reserved', 'transmitting')") == [
        (0,)
    ]


@pytest.mark.slow
def test_crash_leaves_other_claims_of_the_batch_retryable(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    """A crash after the 250 of the first of a batch of three: that one is U, the two claimed with it
    but never gated go back to the queue and are sent by the next sender (R), one copy each."""
    emails = seed(db_url, 3, workdir=tmp_path / "seed")
    env = _env(sendguard_env, tmp_path, smtp_peer)
    crashing = dict(env, SENDGUARD_FAILPOINTS=f"{fp.AFTER_250}=1*crash")
    result = run_cli(["run", "--until-idle", "--batch", "3", *TICK], crashing, timeout=60)
    assert result.returncode == fp.CRASH_EXIT_CODE, result.stderr[-3000:]
    assert smtp_peer.count() == 1
    _take_over(env)

    final = enrollments(db_url)
    assert sorted(s for s, _, _ in final.values()) == ["sent", "sent", "unknown"]
    (first,) = [e for e, (s, _, _) in final.items() if s == "unknown"]
    assert smtp_peer.per_recipient() == dict.fromkeys(emails, 1)
    assert send_log(db_url, first)[0][0] == "unknown"
    for e in set(emails) - {first}:
        assert [s for s, _, _ in send_log(db_url, e)] == ["deferred", "sent"]
        assert final[e][2] == 2  # the reaped attempt counts: it was claimed, never transmitted


# --- a frozen sender past its lease -----------------------------------------------------------------


@pytest.mark.slow
def test_sigstopped_sender_is_fenced_after_takeover(
    db_url: str, sendguard_env: dict[str, str], smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    (email,) = seed(db_url, 1, workdir=tmp_path / "seed")
    env = _env(sendguard_env, tmp_path, smtp_peer)
    # The stall parks the zombie between its reservation and the gate; if it ever passed the gate it
    # would crash with 86 (after_gate), so its exit code tells whether it was fenced.
    zombie_env = dict(env, SENDGUARD_FAILPOINTS=f"{fp.AFTER_RESERVE}=1*stall(5);{fp.AFTER_GATE}=crash")
    zombie_log = tmp_path / "zombie.log"
    with senders() as procs:
        zombie = spawn(procs, zombie_env, tmp_path / "zombie.lock", ["--until-idle", *TICK], zombie_log)
        wait_for(
            lambda: [s for s, _ in _log(db_url, email)] == ["reserved"],
            30,
            "the zombie's reservation",
            zombie_log,
        )
        zombie.send_signal(signal.SIGSTOP)
        try:
            # Its slot and its claim lease expire while it is frozen; the new sender waits them out,
            # reaps the claim back to the queue, and sends.
            _take_over(env)
            assert smtp_peer.per_recipient() == {email: 1}
            assert enrollments(db_url) == {email: ("sent", None, 2)}
        finally:
            zombie.send_signal(signal.SIGCONT)
        code = wait_exit(zombie, 60, zombie_log)

    log_text = zombie_log.read_text()
    assert code == 0, log_text[-3000:]
    assert "failpoint after_gate: crash" not in log_text  # the gate refused the stale token
    assert smtp_peer.per_recipient() == {email: 1}
    assert smtp_peer.connections() == 1  # the zombie never even connected
    assert enrollments(db_url) == {email: ("sent", None, 2)}
    assert [s for s, _ in _log(db_url, email)] == ["deferred", "sent"]


# --- control: a claim without its status re-check ---------------------------------------------------


def _claim_parts() -> tuple[str, str, str]:
    """claim.py's SQLite claim statement, split into its pick (the subquery), its UPDATE ... SET head,
    and its RETURNING tail. Both backends run these (the PostgreSQL form adds row locks)."""
    sql = q._CLAIM_SQLITE.text.strip()
    m = re.search(r"^(UPDATE .*?)WHERE id IN \((.*)\) AND status = 'queued'\s*(RETURNING .*)$", sql, re.S)
    assert m is not None, "claim.py's SQLite claim statement changed shape: update this control"
    return m[1], m[2], m[3]


def _racing_claims(db_url: str, *, recheck: bool) -> list[list[int]]:
    """Two claimers pick the same due rows (both before either updates: the race the re-check is for),
    then each runs the claim UPDATE on its pick. Returns the enrollment ids each one claimed."""
    head, pick, returning = _claim_parts()
    update = text(
        head + "WHERE id IN :ids" + (" AND status = 'queued'" if recheck else "") + "\n" + returning
    ).bindparams(
        bindparam("ids", expanding=True), bindparam("now", type_=q._TS), bindparam("lease_until", type_=q._TS)
    )
    pick_stmt = text(pick).bindparams(bindparam("now", type_=q._TS))
    engine, reader = make_engine(db_url), make_engine(db_url, readonly=True)
    try:
        now = DatabaseClock(engine).now()
        (campaign_id,) = sql_rows(db_url, "SELECT id FROM campaign WHERE name = :n", {"n": CAMPAIGN})[0]
        params = {
            "campaign_id": campaign_id,
            "limit": 10,
            "now": now,
            "lease_until": now + timedelta(seconds=60),
        }
        both_picked = threading.Barrier(2, timeout=30)
        claimed: list[list[int]] = [[], []]
        errors: list[BaseException] = []

        def claimer(i: int) -> None:
            try:
                with reader.connect() as conn:
                    ids = [r[0] for r in conn.execute(pick_stmt, params)]
                both_picked.wait()
                with engine.begin() as conn:
                    rows = conn.execute(
                        update, {**params, "ids": ids, "token_prefix": f"claimer{i}.", "instance": f"c{i}"}
                    ).all()
                claimed[i] = [r[0] for r in rows]
            except BaseException as exc:  # surfaced below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return claimed
    finally:
        engine.dispose()
        reader.dispose()


def assert_claimed_once(db_url: str, claims: list[list[int]]) -> None:
    """The invariant every concurrency test leans on: no enrollment is held by two claimers, and the
    database counts one attempt per claim."""
    seen: dict[int, int] = {}
    for claimer, ids in enumerate(claims):
        for eid in ids:
            assert eid not in seen, f"double claim: enrollment {eid} claimed by {seen[eid]} and {claimer}"
            seen[eid] = claimer
    attempts = dict(sql_rows(db_url, "SELECT id, attempts FROM campaign_lead WHERE status = 'sending'"))
    doubled = {eid: n for eid, n in attempts.items() if n != 1}
    assert not doubled, f"double claim: attempts {doubled}"


def _real_claims_racing(db_url: str) -> list[list[int]]:
    """The product's claim (sender/claim.py as is), two claimers started together."""
    engine = make_engine(db_url)
    try:
        now = DatabaseClock(engine).now()
        (campaign_id,) = sql_rows(db_url, "SELECT id FROM campaign WHERE name = :n", {"n": CAMPAIGN})[0]
        start = threading.Barrier(2, timeout=30)
        claimed: list[list[int]] = [[], []]
        errors: list[BaseException] = []

        def claimer(i: int) -> None:
            try:
                start.wait()
                with engine.begin() as conn:
                    got = q.claim(
                        conn, campaign_id=campaign_id, limit=10, token_prefix=f"real{i}.", instance=f"r{i}",
                        now=now, lease_until=now + timedelta(seconds=60),
                    )  # fmt: skip
                claimed[i] = [c.enrollment_id for c in got]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return claimed
    finally:
        engine.dispose()


CONTROL_LEADS = 4


def test_control_claim_with_recheck_is_single(db_url: str, tmp_path: Path) -> None:
    seed(db_url, CONTROL_LEADS, workdir=tmp_path / "seed")
    claims = _racing_claims(db_url, recheck=True)
    assert_claimed_once(db_url, claims)
    # Both picked every row; the re-check gave all of them to whichever claimer updated first.
    assert sorted(len(c) for c in claims) == [0, CONTROL_LEADS]


def test_control_claim_without_recheck_is_caught_as_double(db_url: str, tmp_path: Path) -> None:
    seed(db_url, CONTROL_LEADS, workdir=tmp_path / "seed")
    claims = _racing_claims(db_url, recheck=False)
    # Without the re-check the second UPDATE takes the rows the first already holds.
    assert [len(c) for c in claims] == [CONTROL_LEADS, CONTROL_LEADS]
    with pytest.raises(AssertionError, match="double claim"):
        assert_claimed_once(db_url, claims)
    # The database shows it too: every enrollment was counted twice, and the first claimer's tokens
    # were silently overwritten (it would go on to send with a claim it no longer holds).
    assert sql_rows(db_url, "SELECT DISTINCT attempts FROM campaign_lead") == [(2,)]


def test_control_product_claim_racing_is_single(db_url: str, tmp_path: Path) -> None:
    seed(db_url, CONTROL_LEADS, workdir=tmp_path / "seed")
    claims = _real_claims_racing(db_url)
    assert_claimed_once(db_url, claims)
    assert sum(len(c) for c in claims) == CONTROL_LEADS
