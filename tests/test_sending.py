"""sending.deliver_batch against a real SMTP peer, on both backends: the next envelope goes out ahead of
its gate only on a connection that is already open, and a refused gate never lets DATA out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from sender import campaigns
from sender.campaign_file import parse_campaign
from sender.clock import FixedClock
from sender.config import Settings
from sender.db import make_engine
from sender.enroll import import_leads
from sender.sending import Identity, PassStats, Plan, claim_batch, deliver_batch
from sender.transport import SmtpTransport
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
) -> tuple[PassStats, SmtpPeer, list[tuple[str, str]]]:
    """Claim the three leads and deliver them to a real peer that notes each command it is asked about
    (phase, recipient). `before` runs after the claim, `between` after each hand-over."""
    seen: list[tuple[str, str]] = []

    def record(rcpt: str, phase: str, nth: int) -> None:
        seen.append((phase, rcpt))
        return None  # no fault: only watch the commands arrive

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
