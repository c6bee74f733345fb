"""The sender's loop (sender/service.py): what it keeps alive and gives back during and after a pass.

Driven in-process on both backends with a clock the test moves (leases are database time) and a
scripted transport that lets time pass during each transmission, as a slow SMTP server does; real
`sendguard run` processes against a slow real peer are in tests/integration/test_multihost.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from sender import campaigns
from sender.campaign_file import parse_campaign
from sender.clock import FixedClock
from sender.config import Settings
from sender.db import make_engine
from sender.enroll import import_leads
from sender.service import SenderService
from sender.transport import Outcome, SendResult

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
NAME = "svc"
LEASE = 10.0
SENT = SendResult(Outcome.SENT, 250, "250 ok", "data_end")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def seed(engine: Engine, n: int) -> None:
    spec = parse_campaign(
        f'name = "{NAME}"\nfrom = "ana@example.com"\n[[variants]]\nletter = "A"\nsubject = "Hi"\nbody = "B"\n'
    )
    campaigns.create_or_update(engine, spec, update_existing=False, now=T0)
    rows = "".join(f"lead{i:03d}@example.com\n" for i in range(n))
    assert import_leads(engine, NAME, f"email\n{rows}".encode(), source="test", now=T0).enrolled == n
    campaigns.start(engine, NAME, actor="test", reason=None, now=T0)


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM campaign_lead GROUP BY status")).all()
    return {s: n for s, n in rows}


class SlowServer:
    """Each transmission takes `seconds` of database time; `during` runs while it is in progress."""

    def __init__(
        self, clock: FixedClock, seconds: float, during: Callable[[int], None] | None = None
    ) -> None:
        self.clock, self.seconds, self.during = clock, seconds, during
        self.sent_to: list[str] = []

    def send(self, msg: object, sender: str, recipient: str) -> SendResult:
        self.clock.set(self.clock.now() + timedelta(seconds=self.seconds))
        if self.during is not None:
            self.during(len(self.sent_to))
        self.sent_to.append(recipient)
        return SENT

    def close(self) -> None:
        pass


def test_a_batch_longer_than_the_lease_keeps_its_claims(engine: Engine) -> None:
    """Six messages of 4 s each against a 10 s lease: the pass renews what it holds, so every gate passes
    and a rival's reaper, running during each transmission, finds nothing of ours to take."""
    seed(engine, 6)
    clock = FixedClock(T0 + timedelta(seconds=1))
    settings = Settings(lease_seconds=LEASE, max_senders=2)
    rival = SenderService(settings, engine, SlowServer(clock, 0), clock=clock)
    reaped: list[int] = []

    def rival_reaps(_: int) -> None:
        r = rival.reap()
        reaped.append(r.requeued + r.unknown)

    server = SlowServer(clock, 4.0, during=rival_reaps)
    service = SenderService(settings, engine, server, clock=clock, batch=6)
    service.register()
    report = service.tick()

    assert (report.stats.sent, report.stats.released, report.stats.unknown) == (6, 0, 0)
    assert sorted(server.sent_to) == [f"lead{i:03d}@example.com" for i in range(6)]
    assert reaped == [0] * 6
    assert statuses(engine) == {"sent": 6}
    assert clock.now() > T0 + timedelta(seconds=2 * LEASE), "the batch outlasted two leases"
    service.shutdown()


def test_a_pass_cut_short_by_the_database_gives_its_claims_back_at_the_next_tick(engine: Engine) -> None:
    seed(engine, 5)
    clock = FixedClock(T0 + timedelta(seconds=1))

    def database_lost(nth: int) -> None:
        if nth == 1:  # the second message is gated and in flight when the database goes away
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    server = SlowServer(clock, 0.1, during=database_lost)
    service = SenderService(Settings(lease_seconds=LEASE), engine, server, clock=clock, batch=5)
    service.register()
    service.safe_tick()  # logs "tick skipped" and goes on
    assert server.sent_to == ["lead000@example.com"]
    assert statuses(engine) == {"sent": 1, "sending": 4}

    server.during = None
    report = service.tick()
    # The three never gated went back to the queue and out in the same tick; the one gated before the
    # failure stays claimed (it may have left) until its lease ends and a reaper makes it unknown.
    assert report.stats.sent == 3
    assert sorted(server.sent_to[1:]) == [f"lead{i:03d}@example.com" for i in (2, 3, 4)]
    assert statuses(engine) == {"sent": 4, "sending": 1}
    with engine.connect() as conn:
        ((status,),) = conn.execute(text("SELECT status FROM send_log WHERE status <> 'sent'")).all()
    assert status == "transmitting"

    clock.set(T0 + timedelta(seconds=2 * LEASE))
    assert service.reap().unknown == 1
    service.shutdown()
