"""sending.deliver_batch against a real SMTP peer, on both backends: the next envelope goes out ahead of
its gate only on a connection that is already open, and a refused gate never lets DATA out."""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models import EnrollmentStatus
from sender import campaigns, sending
from sender import claim as q
from sender.campaign_file import parse_campaign
from sender.clock import FixedClock
from sender.config import Settings
from sender.db import make_engine
from sender.enroll import import_leads
from sender.sending import Identity, PassStats, Plan, claim_batch, deliver_batch
from sender.transport import InFlight, SmtpTransport
from tests.smtp_peer import PHASES, SmtpPeer

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
NAME = "overlap"
ACTOR = "test:sending"
IDENT = Identity("unit-sender", "test-host", 4242)
SETTINGS = Settings(retry_base_seconds=60.0, max_attempts=5, lease_seconds=300.0)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    campaign = (
        f'name = "{NAME}"\nfrom = "ana@example.com"\n'
        '[[variants]]\nletter = "A"\nsubject = "Hi {{ email }}"\nbody = "Body"\n'
    )
    campaigns.create_or_update(engine, parse_campaign(campaign, "test"), update_existing=False, now=T0)
    rows = "".join(f"lead{i}@example.com\n" for i in range(3))
    assert import_leads(engine, NAME, f"email\n{rows}".encode(), source="test", now=T0).enrolled == 3
    campaigns.start(engine, NAME, actor=ACTOR, reason=None, now=T0)
    yield engine
    engine.dispose()


def _plan(engine: Engine) -> Plan:
    with engine.connect() as conn:
        campaign = campaigns.get_campaign(conn, NAME)
        return Plan(campaign, {v.letter: v for v in campaigns.variants_of(conn, campaign.id)})


def _deliver_all(
    engine: Engine,
    factory: Callable[..., SmtpPeer],
    *,
    before: Callable[[FixedClock], None] | None = None,
    between: Callable[[FixedClock], None] | None = None,
    pipelining: bool = False,
    fault: Callable[[str, str], str | None] | None = None,
) -> tuple[PassStats, SmtpPeer, list[tuple[str, str]]]:
    """Claim the three leads and deliver them to a real peer that notes each command it is asked about
    (phase, recipient). `before` runs after the claim, `between` after each hand-over, `fault` (on the
    peer's thread, before it answers a command) may return a reply to give instead."""
    seen: list[tuple[str, str]] = []

    def record(rcpt: str, phase: str, nth: int) -> str | None:
        seen.append((phase, rcpt))
        return None if fault is None else fault(rcpt, phase)

    peer = factory(record, phases=PHASES, pipelining=pipelining)
    clock = FixedClock(T0 + timedelta(seconds=1))
    plan = _plan(engine)
    batch = claim_batch(engine, plan, IDENT, SETTINGS, clock, 3)
    if before is not None:
        before(clock)
    transport = SmtpTransport(peer.url, timeout=10)
    try:
        stats = deliver_batch(
            engine, transport, plan, list(batch.reservations), SETTINGS, clock,
            between=None if between is None else lambda _in_flight: between(clock),
        )  # fmt: skip
    finally:
        transport.close()
    return stats, peer, seen


def _pause(engine: Engine, clock: FixedClock) -> None:
    campaigns.pause(engine, NAME, actor=ACTOR, reason="test", now=clock.now())


def _states(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.email, cl.status FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id"
                " ORDER BY l.email"
            )
        )
        return [(r[0], r[1]) for r in rows]


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_batch_goes_out_on_one_connection_each_envelope_ahead_of_its_gate(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer], pipelining: bool
) -> None:
    stats, peer, seen = _deliver_all(engine, smtp_peer_factory, pipelining=pipelining)
    assert (stats.sent, stats.released) == (3, 0)
    assert peer.count() == 3 and peer.connections() == 1
    assert peer.per_recipient() == {f"lead{i}@example.com": 1 for i in range(3)}
    assert {s for _, s in _states(engine)} == {"sent"}


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_gate_refused_mid_batch_resets_the_early_envelope_and_sends_nothing(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer], pipelining: bool
) -> None:
    paused: list[bool] = []

    def pause_after_the_first(clock: FixedClock) -> None:  # the operator's pause lands between two
        if not paused:
            _pause(engine, clock)
            paused.append(True)

    stats, peer, seen = _deliver_all(
        engine, smtp_peer_factory, between=pause_after_the_first, pipelining=pipelining
    )

    assert (stats.sent, stats.released) == (1, 2)
    assert peer.count() == 1 and peer.connections() == 1
    # The second envelope went out on the open connection while its gate was refused, and was reset
    # (RSET; with PIPELINING its DATA was open too, so the connection was closed instead): the server
    # saw its RCPT TO, never its message. After that refusal the third waited for its gate
    # (refused too: the campaign is paused), so the server never heard of it.
    assert [r for phase, r in seen if phase == "rcpt"] == ["lead0@example.com", "lead1@example.com"]
    assert [r for phase, r in seen if phase == "data_end"] == ["lead0@example.com"]
    assert _states(engine) == [
        ("lead0@example.com", "sent"),
        ("lead1@example.com", "queued"),
        ("lead2@example.com", "queued"),
    ]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM send_log")).scalars().all() == ["sent"]


def test_a_sender_refused_its_first_gate_never_connects(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer]
) -> None:
    stats, peer, seen = _deliver_all(engine, smtp_peer_factory, before=lambda clock: _pause(engine, clock))
    assert (stats.sent, stats.released) == (0, 3)
    assert peer.connections() == 0 and seen == []
    assert {s for _, s in _states(engine)} == {"queued"}


def _send_status(engine: Engine, email: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT s.status FROM send_log AS s JOIN lead AS l ON l.id = s.lead_id WHERE l.email = :email"
            ),
            {"email": email},
        ).scalar_one_or_none()


def _poll(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("pipelining", [True], ids=["pipelining"])
def test_a_pause_between_a_gate_and_its_payload_withdraws_the_message(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer], pipelining: bool
) -> None:
    """With PIPELINING the second message's gate commits while the first one's reply is on its way.
    The peer holds that reply until the second gate has committed, and the operator pauses then: the
    second message must not leave. Its gate is withdrawn (the lead back in the queue, the attempt
    given back) and its open DATA closed, never ended."""
    gated_first: list[bool] = []

    def pause_once_the_next_gate_committed(rcpt: str, phase: str) -> None:
        if (phase, rcpt) == ("data_end", "lead0@example.com"):
            gated_first.append(_poll(lambda: _send_status(engine, "lead1@example.com") == "transmitting"))
            campaigns.pause(engine, NAME, actor=ACTOR, reason="test", now=T0 + timedelta(seconds=2))
        return None

    stats, peer, seen = _deliver_all(
        engine, smtp_peer_factory, pipelining=True, fault=pause_once_the_next_gate_committed
    )

    assert gated_first == [True] and peer.errors == []
    assert (stats.sent, stats.released) == (1, 2)
    assert peer.count() == 1
    assert [r for phase, r in seen if phase == "rcpt"] == ["lead0@example.com", "lead1@example.com"]
    assert [r for phase, r in seen if phase == "data_end"] == ["lead0@example.com"]
    assert _states(engine) == [
        ("lead0@example.com", "sent"),
        ("lead1@example.com", "queued"),
        ("lead2@example.com", "queued"),
    ]
    with engine.connect() as conn:
        withdrawn = conn.execute(
            text(
                "SELECT s.status, cl.reason, cl.attempts FROM send_log AS s"
                " JOIN campaign_lead AS cl ON cl.id = s.enrollment_id JOIN lead AS l ON l.id = cl.lead_id"
                " WHERE l.email = 'lead1@example.com'"
            )
        ).one()
    # Outside the live-send key, so the lead is sent once after the resume.
    assert tuple(withdrawn) == ("deferred", "withdrawn_before_payload", 0)


def test_a_reply_already_in_when_the_next_gate_commits_needs_no_second_read(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hand-over here returns only once the previous reply is in: reading it then waits on
    nobody, so the payload follows its gate as closely as without PIPELINING and the gate is not read
    again. (The tests above hold the reply back: there the second read is what stops the message.)"""
    flights: list[InFlight] = []
    write_payload = SmtpTransport.write_payload

    def noting(self: SmtpTransport, opened: Any) -> Any:
        written = write_payload(self, opened)
        if isinstance(written, InFlight):
            flights.append(written)
        return written

    hand_over = sending._hand_over

    def once_the_reply_is_in(*args: Any, **kwargs: Any) -> Any:
        out = hand_over(*args, **kwargs)
        if flights and flights[-1]._result is None:  # a reply to read after this hand-over
            sock = flights[-1]._smtp.sock
            assert sock is not None and select.select([sock], [], [], 10)[0], "no reply within 10 s"
        return out

    checks: list[int] = []
    gate_stands = q.gate_stands
    monkeypatch.setattr(SmtpTransport, "write_payload", noting)
    monkeypatch.setattr(sending, "_hand_over", once_the_reply_is_in)
    monkeypatch.setattr(q, "gate_stands", lambda *a, **k: checks.append(1) or gate_stands(*a, **k))

    stats, peer, _ = _deliver_all(engine, smtp_peer_factory, pipelining=True)

    assert (stats.sent, peer.count(), len(flights)) == (3, 3, 3)
    assert checks == []


@pytest.mark.parametrize("threshold", [1, 5], ids=["breaker-trips", "breaker-holds"])
def test_a_bounce_read_after_the_next_gate_is_recorded_before_the_next_payload(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer], threshold: int
) -> None:
    """The first message's 550 arrives after the second gate committed. Its record (suppression, the
    hard-failure breaker) runs before the second payload leaves: with a threshold of one bounce the
    breaker pauses the campaign and the second message is withdrawn; otherwise the second goes out
    with the first already recorded."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE campaign SET breaker_hard_failures = :n"), {"n": threshold})
    recorded_before: list[tuple[str | None, str | None]] = []

    def bounce_the_first(rcpt: str, phase: str) -> str | None:
        if (phase, rcpt) == ("data_end", "lead0@example.com"):
            assert _poll(lambda: _send_status(engine, "lead1@example.com") == "transmitting")
            return "550"
        if (phase, rcpt) == ("data_end", "lead1@example.com"):
            recorded_before.append((_send_status(engine, "lead0@example.com"), _states(engine)[0][1]))
        return None

    stats, peer, seen = _deliver_all(engine, smtp_peer_factory, pipelining=True, fault=bounce_the_first)

    assert peer.errors == []
    with engine.connect() as conn:
        status, paused_by = conn.execute(text("SELECT status, paused_by FROM campaign")).one()
        suppressed = conn.execute(text("SELECT email FROM suppression")).scalars().all()
    assert suppressed == ["lead0@example.com"]
    if threshold == 1:
        assert (status, paused_by) == ("paused", "breaker:hard_failures")
        assert (stats.failed, stats.sent, stats.released) == (1, 0, 2)
        assert peer.count() == 0 and recorded_before == []
        assert [r for phase, r in seen if phase == "data_end"] == ["lead0@example.com"]
        assert [s for _, s in _states(engine)] == ["failed", "queued", "queued"]
    else:
        assert status == "active"
        assert (stats.failed, stats.sent, stats.released) == (1, 2, 0)
        assert recorded_before == [("failed", "failed")]
        assert peer.count() == 2 and peer.connections() == 1


def test_a_gated_claim_reaped_while_the_previous_reply_was_on_its_way_goes_back_unsent(
    engine: Engine, smtp_peer_factory: Callable[..., SmtpPeer]
) -> None:
    """The second gate committed; the first reply takes longer than the second claim's lease, and a
    rival's reaper settles that claim as `unknown` (a gated claim may have transmitted, as far as it
    can tell). Before the second payload leaves, the sender sees its gate no longer stands: the
    message never leaves, and the claim goes back to the queue instead of waiting for a review."""
    reaped: list[object] = []

    def reap_the_second_meanwhile(rcpt: str, phase: str) -> None:
        if (phase, rcpt) != ("data_end", "lead0@example.com"):
            return None
        assert _poll(lambda: _send_status(engine, "lead1@example.com") == "transmitting")
        later = T0 + timedelta(seconds=SETTINGS.lease_seconds + 60)  # the lease has run out by then
        with engine.begin() as conn:
            (enrollment_id, token) = conn.execute(
                text(
                    "SELECT cl.id, cl.claim_token FROM campaign_lead AS cl JOIN lead AS l ON l.id = cl.lead_id"
                    " WHERE l.email = 'lead1@example.com'"
                )
            ).one()
            reaped.append(q.reap_one(conn, enrollment_id=enrollment_id, token=token, now=later))
        return None

    stats, peer, seen = _deliver_all(
        engine, smtp_peer_factory, pipelining=True, fault=reap_the_second_meanwhile
    )

    assert reaped == [EnrollmentStatus.UNKNOWN] and peer.errors == []
    assert (stats.sent, stats.released) == (2, 1)
    assert sorted(peer.per_recipient()) == ["lead0@example.com", "lead2@example.com"]
    assert [r for phase, r in seen if phase == "data_end"] == ["lead0@example.com", "lead2@example.com"]
    assert _states(engine) == [
        ("lead0@example.com", "sent"),
        ("lead1@example.com", "queued"),
        ("lead2@example.com", "sent"),
    ]
    assert _send_status(engine, "lead1@example.com") == "deferred"
