"""Circuit breakers (sender/breakers.py): the `[breakers]` table, the schema revision that stores it, and
each breaker's decision, driven through the sender's own claim_batch/deliver/reap on both backends.

The SMTP side is a scripted transport here (each test names the outcomes it needs); the real SMTP peer
and real `sendguard run` processes are in tests/integration/test_breakers.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text

from sender import campaigns
from sender import claim as q
from sender.campaign_file import BreakersSpec, parse_campaign
from sender.clock import FixedClock
from sender.config import Settings
from sender.db import make_engine
from sender.enroll import import_leads
from sender.errors import UsageError
from sender.migrate import alembic_config, upgrade
from sender.sending import Identity, Plan, claim_batch, deliver
from sender.service import SenderService
from sender.transport import Outcome, SendResult
from tests.conftest import run_cli

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
NAME = "brk"
VARIANT = '\n[[variants]]\nletter = "A"\nsubject = "Hi {{ email }}"\nbody = "Body"\n'
IDENT = Identity("unit-sender", "test-host", 4242)
SENT = SendResult(Outcome.SENT, 250, "250 ok", "data_end")
FAILED = SendResult(Outcome.FAILED, 550, "550 5.1.1 no such user", "rcpt", hard_bounce=True)
UNKNOWN = SendResult(Outcome.UNKNOWN, None, "connection lost after the payload", "data_end")
AUTH = SendResult(
    Outcome.DEFERRED, 535, "535 5.7.8 authentication credentials invalid", "auth", auth_failed=True
)


# --- the campaign file ---------------------------------------------------------------------------


def _file(breakers: str = "") -> str:
    return f'name = "{NAME}"\nfrom = "ana@example.com"\n{VARIANT}\n{breakers}'


def test_breakers_are_on_by_default_and_settable() -> None:
    assert parse_campaign(_file()).breakers == BreakersSpec(True, 5, 20, True, 3)
    spec = parse_campaign(
        _file(
            "[breakers]\nduplicate = false\nhard_failures = 2\nhard_failures_window = 4\nauth = false\nunknowns = 0\n"
        )
    )
    assert spec.breakers == BreakersSpec(False, 2, 4, False, 0)
    # Keys left out keep their default.
    assert parse_campaign(_file("[breakers]\nunknowns = 7\n")).breakers == BreakersSpec(True, 5, 20, True, 7)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[breakers]\nunknown = 3\n", "breakers: unknown key 'unknown' (did you mean 'unknowns'?)"),
        ("[breakers]\nduplicate = 1\n", "breakers.duplicate: must be true or false, got an integer"),
        ('[breakers]\nauth = "yes"\n', "breakers.auth: must be true or false, got a string"),
        ("[breakers]\nhard_failures = -1\n", "breakers.hard_failures: must be between 0 and"),
        ("[breakers]\nhard_failures = true\n", "breakers.hard_failures: must be an integer, got a boolean"),
        (
            "[breakers]\nhard_failures_window = 0\n",
            "breakers.hard_failures_window: must be between 1 and 10000",
        ),
        ("[breakers]\nhard_failures = 21\n", "21 can never be reached within hard_failures_window = 20"),
        ("[breakers]\nunknowns = 2.5\n", "breakers.unknowns: must be an integer, got a number"),
        ("breakers = 3\n", "breakers: must be a table ([breakers]), got an integer"),
    ],
)
def test_bad_breakers_are_one_line_errors(table: str, message: str) -> None:
    # A top-level `breakers = 3` must come before the [[variants]] tables to be top-level at all.
    text_ = _file(table) if table.startswith("[") else table + _file()
    with pytest.raises(UsageError) as info:
        parse_campaign(text_, "c.toml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("c.toml: ") and message in str(info.value), str(info.value)


def test_campaign_create_refuses_bad_breakers_with_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    path = tmp_path / "c.toml"
    path.write_text(_file("[breakers]\nhard_failures_window = 0\n"), encoding="utf-8")
    env = dict(os.environ, SENDGUARD_DATABASE_URL=sqlite_url)
    result = run_cli(["campaign", "create", str(path)], env)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "breakers.hard_failures_window" in result.stderr
    assert "Traceback" not in result.stderr
    engine = make_engine(sqlite_url)
    try:
        assert campaigns.list_campaigns(engine) == []  # nothing created
    finally:
        engine.dispose()


# --- storage -------------------------------------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def seed(engine: Engine, n: int, breakers: str = "") -> int:
    """An active campaign with `n` queued leads due from T0; returns its id."""
    spec = parse_campaign(_file(breakers), "test")
    campaigns.create_or_update(engine, spec, update_existing=False, now=T0)
    rows = "".join(f"lead{i:03d}@example.com\n" for i in range(n))
    assert import_leads(engine, NAME, f"email\n{rows}".encode(), source="test", now=T0).enrolled == n
    campaigns.start(engine, NAME, actor="test", reason=None, now=T0)
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM campaign WHERE name = :n"), {"n": NAME}).scalar_one())


def test_create_stores_the_breakers_and_update_replaces_them(engine: Engine) -> None:
    seed(engine, 0, "[breakers]\nhard_failures = 1\nhard_failures_window = 1\nauth = false\n")
    (row,) = [r for r in campaigns.list_campaigns(engine) if r["name"] == NAME]
    assert row["breakers"] == {
        "duplicate": True,
        "hard_failures": 1,
        "hard_failures_window": 1,
        "auth": False,
        "unknowns": 3,
    }
    campaigns.create_or_update(engine, parse_campaign(_file()), update_existing=True, now=T0)
    (row,) = campaigns.list_campaigns(engine)
    assert row["breakers"]["auth"] is True and row["breakers"]["hard_failures"] == 5


def test_upgrading_from_0001_gives_existing_campaigns_every_breaker(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO campaign (name, status, from_addr, min_interval_seconds, jitter_seconds, "
                    "timezone, created_at, updated_at) VALUES ('old', 'active', 'a@example.com', 0, 0, 'UTC', "
                    ":t, :t)"
                ),
                {"t": T0.replace(tzinfo=None)},
            )
        upgrade(db_url)
        (row,) = campaigns.list_campaigns(engine)
        assert row["breakers"] == {
            "duplicate": True,
            "hard_failures": 5,
            "hard_failures_window": 20,
            "auth": True,
            "unknowns": 3,
        }
    finally:
        engine.dispose()


# --- the breakers, through the sender's own pass -------------------------------------------------


class Scripted:
    """A transport that answers each send with the next scripted result (and counts the sends)."""

    def __init__(self, *results: SendResult) -> None:
        self.results = list(results)
        self.sent_to: list[str] = []

    def send(self, msg: object, sender: str, recipient: str) -> SendResult:
        self.sent_to.append(recipient)
        return self.results.pop(0)

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, engine: Engine, clock: FixedClock) -> None:
        self.engine, self.clock = engine, clock
        self.settings = Settings(retry_base_seconds=60.0, max_attempts=5, lease_seconds=300.0)

    def plan(self) -> Plan:
        with self.engine.connect() as conn:
            campaign = campaigns.get_campaign(conn, NAME)
            return Plan(campaign, {v.letter: v for v in campaigns.variants_of(conn, campaign.id)})

    def send(self, transport: Scripted, limit: int = 1) -> int:
        """One claim of up to `limit` and delivery of each; returns how many were claimed."""
        plan = self.plan()
        batch = claim_batch(self.engine, plan, IDENT, self.settings, self.clock, limit)
        for r in batch.reservations:
            deliver(self.engine, transport, plan, r, self.settings, self.clock)
        return len(batch.reservations) + batch.handled

    def one(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).one()

    def rows(self, sql: str, **params: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def status(self) -> tuple[str, str | None, str | None]:
        return self.one("SELECT status, paused_by, pause_reason FROM campaign WHERE name = :n", n=NAME)  # type: ignore[return-value]

    def auto_pauses(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            return [
                (r[0], r[1])
                for r in conn.execute(
                    text("SELECT actor, reason FROM campaign_event WHERE kind = 'auto_paused' ORDER BY id")
                )
            ]


@pytest.fixture
def h(engine: Engine) -> Harness:
    return Harness(engine, FixedClock(T0 + timedelta(seconds=1)))


def test_hard_failures_trip_at_the_threshold_within_the_window(h: Harness) -> None:
    seed(h.engine, 10, "[breakers]\nhard_failures = 2\nhard_failures_window = 3\n")
    # F S S S F: the two failures are never within three sends of each other.
    for result in (FAILED, SENT, SENT, SENT, FAILED):
        assert h.send(Scripted(result)) == 1
        assert h.status()[0] == "active"
    assert h.send(Scripted(FAILED)) == 1  # last three: S F F
    status, paused_by, reason = h.status()
    assert (status, paused_by) == ("paused", "breaker:hard_failures")
    assert reason == "2 hard failures (5xx) among the last 3 sends (threshold 2)"
    assert h.auto_pauses() == [("breaker:hard_failures", reason)]
    # Nothing is claimed, let alone sent, after the trip.
    later = Scripted(SENT)
    assert h.send(later, limit=4) == 0 and later.sent_to == []


def test_a_resume_starts_a_fresh_count(h: Harness) -> None:
    seed(h.engine, 10, "[breakers]\nhard_failures = 2\nhard_failures_window = 5\nunknowns = 0\n")
    h.send(Scripted(FAILED))
    h.send(Scripted(FAILED))
    assert h.status()[0] == "paused"
    campaigns.resume(h.engine, NAME, actor="test", reason="fixed", now=h.clock.now())
    h.send(Scripted(FAILED))  # the window holds three failures, but only one since the resume
    assert h.status() == ("active", None, None)
    h.send(Scripted(FAILED))
    assert h.status()[:2] == ("paused", "breaker:hard_failures")
    assert len(h.auto_pauses()) == 2


def test_unknowns_trip_at_the_threshold(h: Harness) -> None:
    seed(h.engine, 10, "[breakers]\nunknowns = 2\n")
    h.send(Scripted(UNKNOWN))
    h.send(Scripted(SENT))
    assert h.status()[0] == "active"
    h.send(Scripted(UNKNOWN))
    status, paused_by, reason = h.status()
    assert (status, paused_by) == ("paused", "breaker:unknowns")
    assert (
        reason is not None and reason.startswith("2 sends of unknown outcome") and "(threshold 2)" in reason
    )


def test_an_unknown_from_the_reaper_counts_too(h: Harness) -> None:
    seed(h.engine, 3, "[breakers]\nunknowns = 1\n")
    plan = h.plan()
    batch = claim_batch(h.engine, plan, IDENT, h.settings, h.clock, 1)
    (r,) = batch.reservations
    with h.engine.begin() as conn:  # a sender that gated, then died mid-transmission
        assert q.commit_to_transmit(conn, r.claimed, send_id=r.send_id, now=h.clock.now())
    h.clock.set(T0 + timedelta(seconds=h.settings.lease_seconds + 10))
    service = SenderService(h.settings, h.engine, Scripted(), clock=h.clock)
    assert service.reap().unknown == 1
    assert h.status()[:2] == ("paused", "breaker:unknowns")


def test_auth_failure_gives_the_claim_back_and_pauses(h: Harness) -> None:
    seed(h.engine, 3)
    transport = Scripted(AUTH)
    h.send(transport, limit=3)
    assert len(transport.sent_to) == 1  # the other two met a paused campaign at the gate
    status, paused_by, reason = h.status()
    assert (status, paused_by) == ("paused", "breaker:auth")
    assert reason == "SMTP authentication failed: 535 5.7.8 authentication credentials invalid"
    # Released, not failed: every lead queued, due now, with no attempt used up; no live send row.
    rows = h.rows("SELECT status, attempts, reason, claim_token FROM campaign_lead ORDER BY id")
    assert rows == [
        ("queued", 0, "auth_failed", None),
        ("queued", 0, None, None),
        ("queued", 0, None, None),
    ]
    assert h.one("SELECT count(*) FROM send_log WHERE status <> 'deferred'") == (0,)
    # After the resume the same lead goes out.
    campaigns.resume(h.engine, NAME, actor="test", reason="password fixed", now=h.clock.now())
    again = Scripted(SENT, SENT, SENT)
    h.send(again, limit=3)
    assert sorted(again.sent_to) == [f"lead{i:03d}@example.com" for i in range(3)]


def test_duplicate_guard_trips_in_the_claim_transaction(h: Harness) -> None:
    campaign_id = seed(h.engine, 4)
    with h.engine.begin() as conn:  # a live send for lead 1 that its enrollment does not know about
        conn.execute(
            text(
                "INSERT INTO send_log (campaign_id, lead_id, enrollment_id, step, variant_letter, status, "
                "claim_token, attempt, message_id, instance_id, host, pid, created_at) "
                "SELECT campaign_id, lead_id, id, step, variant_letter, 'sent', 'other', 1, '<x@y>', 'other', "
                "'h', 1, :t FROM campaign_lead WHERE id = (SELECT min(id) + 1 FROM campaign_lead)"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
    transport = Scripted(SENT, SENT, SENT, SENT)
    assert h.send(transport, limit=4) == 4
    assert transport.sent_to == []  # the batch's other reservations met a paused campaign at the gate
    status, paused_by, reason = h.status()
    assert (status, paused_by) == ("paused", "breaker:duplicate")
    assert reason is not None and "duplicate guard fired" in reason
    kinds = h.rows("SELECT kind, actor FROM campaign_event WHERE campaign_id = :c ORDER BY id", c=campaign_id)
    assert kinds[-2:] == [
        ("duplicate_prevented", f"sender:{IDENT.instance_id}"),
        ("auto_paused", "breaker:duplicate"),
    ]
    counts = dict(h.rows("SELECT status, count(*) FROM campaign_lead GROUP BY status"))
    assert counts == {"skipped": 1, "queued": 3}


def test_breakers_that_are_off_never_trip(h: Harness) -> None:
    seed(
        h.engine,
        5,
        "[breakers]\nduplicate = false\nhard_failures = 0\nauth = false\nunknowns = 0\n",
    )
    for result in (FAILED, FAILED, UNKNOWN, UNKNOWN, AUTH):
        h.send(Scripted(result))
    assert h.status() == ("active", None, None)
    assert h.auto_pauses() == []
    # With the auth breaker off, a refused login is an ordinary deferred attempt (counted, backed off).
    assert h.one("SELECT status, attempts, reason FROM campaign_lead ORDER BY id DESC LIMIT 1") == (
        "queued",
        1,
        "deferred",
    )


def test_auto_pause_only_pauses_an_active_campaign(h: Harness) -> None:
    campaign_id = seed(h.engine, 0)
    campaigns.pause(h.engine, NAME, actor="cli:ana", reason="by hand", now=h.clock.now())
    with h.engine.begin() as conn:
        assert not campaigns.auto_pause(conn, campaign_id, breaker="duplicate", reason="x", now=h.clock.now())
    assert h.status() == ("paused", "cli:ana", "by hand")  # the operator's reason is kept
    assert h.auto_pauses() == []
