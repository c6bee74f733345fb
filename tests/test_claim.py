"""The claim-and-send protocol's SQL (sender/claim.py), step by step, against real databases.

Each test calls the protocol functions directly on SQLAlchemy connections of a migrated database
(both backends via `db_url`); rows are seeded with the product's own campaign/enroll functions and
adjusted with plain Core statements. Times are explicit parameters (T0 ...), as the sender passes the
database clock's reading: nothing here waits for real time to pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, select, text, update

from models import CampaignLead, EnrollmentStatus, SenderSlot, SendLog, SendStatus
from sender import campaigns
from sender import claim as q
from sender.campaign_file import parse_campaign
from sender.db import make_engine
from sender.enroll import import_leads
from tests.conftest import prepare_database

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # enrollment time: every enrollment is due from T0
T1 = T0 + timedelta(seconds=1)  # claim time
LEASE = timedelta(seconds=300)
AFTER_LEASE = T1 + LEASE + timedelta(seconds=1)
ACTOR = "test:claim"

CL = CampaignLead.__table__.c
SL = SendLog.__table__.c


# --- seeding -------------------------------------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def seed(engine: Engine, name: str, n: int, *, status: str = "active", letters: str = "AB") -> int:
    """A campaign with `n` queued enrollments due from T0; returns the campaign id."""
    variants = "".join(
        f'\n[[variants]]\nletter = "{letter}"\nsubject = "Hi {{{{ email }}}}"\nbody = "Body {letter}"\n'
        for letter in letters
    )
    spec = parse_campaign(f'name = "{name}"\nfrom = "Ana <ana@example.com>"\n{variants}', "test")
    campaigns.create_or_update(engine, spec, update_existing=False, now=T0)
    rows = "".join(f"{name}-{i:04d}@example.com\n" for i in range(n))
    assert import_leads(engine, name, f"email\n{rows}".encode(), source="test", now=T0).enrolled == n
    if status in ("active", "paused"):
        campaigns.start(engine, name, actor=ACTOR, reason=None, now=T0)
    if status == "paused":
        campaigns.pause(engine, name, actor=ACTOR, reason="test", now=T0)
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM campaign WHERE name = :n"), {"n": name}).scalar_one()


def claim(
    engine: Engine, campaign_id: int, limit: int, *, instance: str = "i1", now: datetime = T1
) -> list[q.Claimed]:
    with engine.begin() as conn:
        return q.claim(
            conn,
            campaign_id=campaign_id,
            limit=limit,
            token_prefix=f"{instance}.tok.",
            instance=instance,
            now=now,
            lease_until=now + LEASE,
        )


def reserve(conn: Connection, c: q.Claimed, *, instance: str = "i1") -> int | None:
    return q.reserve(
        conn,
        c,
        message_id=f"<sg.{c.campaign_id}.{c.lead_id}.{c.step}@example.com>",
        instance=instance,
        host="test-host",
        pid=4242,
        now=T1,
    )


def claim_and_reserve(engine: Engine, campaign_id: int, limit: int) -> list[tuple[q.Claimed, int]]:
    out = []
    with engine.begin() as conn:
        claimed = q.claim(
            conn,
            campaign_id=campaign_id,
            limit=limit,
            token_prefix="i1.tok.",
            instance="i1",
            now=T1,
            lease_until=T1 + LEASE,
        )
        for c in claimed:
            send_id = reserve(conn, c)
            assert send_id is not None
            out.append((c, send_id))
    return out


def enrollment(engine: Engine, enrollment_id: int) -> dict[str, object]:
    with engine.connect() as conn:
        return dict(conn.execute(select(CampaignLead.__table__).where(CL.id == enrollment_id)).one()._mapping)


def send_row(engine: Engine, send_id: int) -> dict[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(select(SendLog.__table__).where(SL.id == send_id)).first()
    return None if row is None else dict(row._mapping)


def set_enrollment(engine: Engine, enrollment_id: int, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(update(CampaignLead.__table__).where(CL.id == enrollment_id).values(**values))


def set_send_status(conn: Connection, send_id: int, status: str) -> None:
    conn.execute(text("UPDATE send_log SET status = :s WHERE id = :id"), {"s": status, "id": send_id})


def enrollment_ids(engine: Engine, campaign_id: int) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(CL.id).where(CL.campaign_id == campaign_id).order_by(CL.id)).scalars()
        )


# --- 1. claim ------------------------------------------------------------------------------------


def test_claim_takes_only_due_queued_rows_of_an_active_campaign_each_with_its_own_token(
    engine: Engine,
) -> None:
    live = seed(engine, "live", 6)
    paused = seed(engine, "paused", 2, status="paused")
    draft = seed(engine, "draft", 2, status="draft")
    ids = enrollment_ids(engine, live)
    set_enrollment(engine, ids[3], next_attempt_at=T1 + timedelta(minutes=5))  # waiting for a retry
    set_enrollment(engine, ids[4], status="sent")
    set_enrollment(engine, ids[5], status="failed", reason="rejected")

    assert claim(engine, paused, 10) == []
    assert claim(engine, draft, 10) == []
    claimed = claim(engine, live, 10, instance="sender-1")

    assert [c.enrollment_id for c in claimed] == ids[:3]
    assert all(c.campaign_id == live and c.step == 0 and c.attempts == 1 for c in claimed)
    assert all(c.variant in ("A", "B") for c in claimed)
    tokens = [c.token for c in claimed]
    assert len(set(tokens)) == 3 and all(t.startswith("sender-1.tok.") for t in tokens)
    for c in claimed:
        row = enrollment(engine, c.enrollment_id)
        assert row["status"] == "sending" and row["claim_token"] == c.token
        assert row["claimed_by"] == "sender-1" and row["attempts"] == 1
        assert row["lease_expires_at"] == T1 + LEASE
        assert row["variant_letter"] == c.variant, "the variant comes from enrollment, never re-chosen"
    untouched = [enrollment(engine, i) for i in ids[3:]]
    assert [(r["status"], r["claim_token"], r["attempts"]) for r in untouched] == [
        ("queued", None, 0),
        ("sent", None, 0),
        ("failed", None, 0),
    ]
    with engine.connect() as conn:
        others = conn.execute(
            text("SELECT count(*) FROM campaign_lead WHERE campaign_id IN (:p, :d) AND status = 'queued'"),
            {"p": paused, "d": draft},
        ).scalar_one()
    assert others == 4

    # The retry comes due: then (and only then) it is claimable.
    assert claim(engine, live, 10, now=T1 + timedelta(minutes=4)) == []
    assert [c.enrollment_id for c in claim(engine, live, 10, now=T1 + timedelta(minutes=5))] == [ids[3]]


def test_a_second_claim_never_returns_rows_already_claimed(engine: Engine) -> None:
    campaign = seed(engine, "twice", 5)
    first = claim(engine, campaign, 2, instance="a")
    second = claim(engine, campaign, 10, instance="b")
    third = claim(engine, campaign, 10, instance="c")

    assert len(first) == 2 and len(second) == 3 and third == []
    assert {c.enrollment_id for c in first}.isdisjoint(c.enrollment_id for c in second)
    assert {c.enrollment_id for c in first + second} == set(enrollment_ids(engine, campaign))
    assert {enrollment(engine, c.enrollment_id)["claimed_by"] for c in second} == {"b"}


# --- 2. reserve ----------------------------------------------------------------------------------


def test_reserve_admits_one_live_row_per_campaign_lead_step_whatever_the_variant(engine: Engine) -> None:
    campaign = seed(engine, "guard", 1)
    [(c, first_id)] = claim_and_reserve(engine, campaign, 1)
    # Another sender's view of the same (campaign, lead, step), having picked the other variant:
    # exactly the original incident, where the variant was part of the key.
    rival = replace(c, variant="B" if c.variant == "A" else "A", token="rival.tok.1")

    with engine.begin() as conn:
        for status in ("reserved", "transmitting", "sent", "unknown"):
            set_send_status(conn, first_id, status)
            assert reserve(conn, rival, instance="rival") is None, f"a {status} row must block the key"
        # The failed insert rolled back only its savepoint: the transaction goes on.
        set_send_status(conn, first_id, "deferred")
        second_id = reserve(conn, rival, instance="rival")
        assert second_id is not None, "a deferred attempt frees the key"
        assert reserve(conn, replace(rival, token="rival.tok.2"), instance="rival") is None
        set_send_status(conn, second_id, "failed")
        third_id = reserve(conn, replace(rival, token="rival.tok.3"), instance="rival")
        assert third_id is not None, "a failed attempt frees the key"

    with engine.connect() as conn:
        rows = conn.execute(
            select(SL.id, SL.status, SL.variant_letter, SL.claim_token)
            .where(SL.lead_id == c.lead_id)
            .order_by(SL.id)
        ).all()
    assert [(r.id, r.status) for r in rows] == [
        (first_id, "deferred"),
        (second_id, "failed"),
        (third_id, "reserved"),
    ]
    assert [r.variant_letter for r in rows] == [c.variant, rival.variant, rival.variant]


def test_reserve_refuses_across_transactions_too(engine: Engine) -> None:
    campaign = seed(engine, "guard2", 1)
    [(c, _)] = claim_and_reserve(engine, campaign, 1)  # committed by "sender one"
    rival = replace(c, variant="B" if c.variant == "A" else "A", token="rival.tok.1")
    with engine.begin() as conn:
        assert reserve(conn, rival, instance="rival") is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM send_log")).scalar_one() == 1


# --- 3. the gate ---------------------------------------------------------------------------------


def test_gate_passes_only_the_token_holder_with_a_live_lease_while_the_campaign_is_active(
    engine: Engine,
) -> None:
    campaign = seed(engine, "gate", 4)
    (forged, s_forged), (late, s_late), (paused, s_paused), (good, s_good) = claim_and_reserve(
        engine, campaign, 4
    )

    with engine.begin() as conn:
        assert not q.commit_to_transmit(conn, replace(forged, token="someone-else"), send_id=s_forged, now=T1)
        assert not q.commit_to_transmit(conn, late, send_id=s_late, now=T1 + LEASE)  # lease ends at T1+LEASE
        assert q.commit_to_transmit(conn, good, send_id=s_good, now=T1)
        assert not q.commit_to_transmit(conn, good, send_id=s_good, now=T1), "the gate opens once"

    campaigns.pause(engine, "gate", actor=ACTOR, reason="stop", now=T1)
    with engine.begin() as conn:
        assert not q.commit_to_transmit(conn, paused, send_id=s_paused, now=T1)
    assert send_row(engine, s_paused)["status"] == "reserved"  # type: ignore[index]
    campaigns.resume(engine, "gate", actor=ACTOR, reason=None, now=T1)
    with engine.begin() as conn:
        assert q.commit_to_transmit(conn, paused, send_id=s_paused, now=T1), (
            "same claim, campaign active again"
        )

    statuses = {sid: send_row(engine, sid) for sid in (s_forged, s_late, s_paused, s_good)}
    assert {sid: row["status"] for sid, row in statuses.items()} == {  # type: ignore[index]
        s_forged: "reserved",
        s_late: "reserved",
        s_paused: "transmitting",
        s_good: "transmitting",
    }
    assert statuses[s_good]["transmit_at"] == T1  # type: ignore[index]
    assert statuses[s_forged]["transmit_at"] is None  # type: ignore[index]


def test_hand_over_alone_records_one_and_gates_the_next_as_one_transaction(engine: Engine) -> None:
    campaign = seed(engine, "handover", 4)
    (first, s1), (second, s2), (third, s3), (fourth, s4) = claim_and_reserve(engine, campaign, 4)

    def sent(c: q.Claimed, send_id: int, now: datetime) -> dict[str, object]:
        return q.record_params(
            c, send_id=send_id, send_status=SendStatus.SENT, enrollment_status=EnrollmentStatus.SENT,
            reason=None, code=250, reply="250 ok", now=now, next_at=now,
        )  # fmt: skip

    with engine.connect() as conn:
        assert q.hand_over_alone(conn, None, (first, s1), T1) is True  # the first gate of a batch
        assert not conn.in_transaction()
        assert q.hand_over_alone(conn, sent(first, s1, T1), (second, s2), T1) is True
        # A gate opens once: the same hand-over again records nothing new and refuses the gate.
        assert q.hand_over_alone(conn, sent(first, s1, T1), (second, s2), T1) is False
        # A forged token neither records nor passes.
        assert (
            q.hand_over_alone(
                conn, sent(replace(second, token="x"), s2, T1), (replace(third, token="x"), s3), T1
            )
            is False
        )
    assert (send_row(engine, s1)["status"], enrollment(engine, first.enrollment_id)["status"]) == (
        "sent",
        "sent",
    )  # type: ignore[index]
    assert send_row(engine, s2)["status"] == "transmitting"  # type: ignore[index]
    assert send_row(engine, s3)["status"] == "reserved"  # type: ignore[index]

    # Paused between two messages: the record still lands, the gate refuses, the claim stays reserved
    # for the caller to release (it was never transmitted).
    campaigns.pause(engine, "handover", actor=ACTOR, reason="stop", now=T1)
    with engine.connect() as conn:
        assert q.hand_over_alone(conn, sent(second, s2, T1), (third, s3), T1) is False
        assert q.hand_over_alone(conn, None, (fourth, s4), T1) is False
    assert (send_row(engine, s2)["status"], enrollment(engine, second.enrollment_id)["status"]) == (
        "sent",
        "sent",
    )  # type: ignore[index]
    assert [send_row(engine, s)["status"] for s in (s3, s4)] == ["reserved", "reserved"]  # type: ignore[index]

    # The last record of a batch, with nothing to gate.
    campaigns.resume(engine, "handover", actor=ACTOR, reason=None, now=T1)
    with engine.connect() as conn:
        assert q.hand_over_alone(conn, None, (third, s3), T1) is True
        assert q.hand_over_alone(conn, sent(third, s3, T1), None, T1) is None
    assert send_row(engine, s3)["status"] == "sent"  # type: ignore[index]


# --- 5. record, 6. reaper ------------------------------------------------------------------------


def test_reaper_turns_an_expired_transmission_unknown_and_a_late_answer_still_records_sent(
    engine: Engine,
) -> None:
    campaign = seed(engine, "late", 1)
    [(c, send_id)] = claim_and_reserve(engine, campaign, 1)
    with engine.begin() as conn:
        assert q.commit_to_transmit(conn, c, send_id=send_id, now=T1)

    with engine.begin() as conn:
        assert q.expired_claims(conn, now=T1 + LEASE - timedelta(seconds=1)) == []
        assert q.expired_claims(conn, now=AFTER_LEASE) == [(c.enrollment_id, c.token)]
        assert q.reap_one(conn, enrollment_id=c.enrollment_id, token=c.token, now=AFTER_LEASE) == (
            EnrollmentStatus.UNKNOWN
        )
    row = enrollment(engine, c.enrollment_id)
    assert (row["status"], row["reason"], row["claim_token"]) == (
        "unknown",
        "lease_expired_during_transmission",
        c.token,
    )
    assert send_row(engine, send_id)["status"] == "unknown"  # type: ignore[index]

    common = dict(
        send_id=send_id,
        send_status=SendStatus.SENT,
        enrollment_status=EnrollmentStatus.SENT,
        reason=None,
        code=250,
        reply="250 2.0.0 Ok: queued as X",
    )
    now = AFTER_LEASE + timedelta(seconds=5)
    with engine.begin() as conn:
        assert not q.record(
            conn, q.record_params(replace(c, token="someone-else"), now=now, next_at=now, **common)
        )
    assert send_row(engine, send_id)["status"] == "unknown"  # type: ignore[index]
    with engine.begin() as conn:
        assert q.record(conn, q.record_params(c, now=now, next_at=now, **common))
    # A retry after a lost commit acknowledgement finds the work done and changes nothing.
    with engine.begin() as conn:
        assert not q.record(conn, q.record_params(c, now=now + timedelta(seconds=9), next_at=now, **common))
    sent = send_row(engine, send_id)
    assert sent is not None and (sent["status"], sent["smtp_code"], sent["finished_at"]) == ("sent", 250, now)
    row = enrollment(engine, c.enrollment_id)
    assert (row["status"], row["reason"], row["last_error"]) == ("sent", None, None)


def test_reaper_requeues_a_claim_that_never_reached_the_gate(engine: Engine) -> None:
    campaign = seed(engine, "reap", 1)
    [(c, send_id)] = claim_and_reserve(engine, campaign, 1)

    with engine.begin() as conn:
        # Lease still running: not the reaper's to take, and nothing may change.
        assert q.reap_one(conn, enrollment_id=c.enrollment_id, token=c.token, now=T1 + LEASE / 2) is None
    assert send_row(engine, send_id)["status"] == "reserved"  # type: ignore[index]
    assert enrollment(engine, c.enrollment_id)["status"] == "sending"

    with engine.begin() as conn:
        assert q.reap_one(conn, enrollment_id=c.enrollment_id, token=c.token, now=AFTER_LEASE) == (
            EnrollmentStatus.QUEUED
        )
        assert q.reap_one(conn, enrollment_id=c.enrollment_id, token=c.token, now=AFTER_LEASE) is None
    reaped = send_row(engine, send_id)
    assert reaped is not None and reaped["status"] == "deferred" and reaped["finished_at"] == AFTER_LEASE
    row = enrollment(engine, c.enrollment_id)
    assert (row["status"], row["claim_token"], row["claimed_by"], row["lease_expires_at"]) == (
        "queued",
        None,
        None,
        None,
    )
    assert row["next_attempt_at"] == AFTER_LEASE

    # The holder wakes up late: its gate fails, and the next claim may reserve the key again.
    with engine.begin() as conn:
        assert not q.commit_to_transmit(conn, c, send_id=send_id, now=T1)
    [again] = claim(engine, campaign, 1, instance="i2", now=AFTER_LEASE)
    assert again.enrollment_id == c.enrollment_id and again.attempts == 2 and again.token != c.token
    with engine.begin() as conn:
        assert reserve(conn, again, instance="i2") is not None


# --- release -------------------------------------------------------------------------------------


def test_release_gives_back_an_untransmitted_claim_and_its_attempt(engine: Engine) -> None:
    campaign = seed(engine, "release", 2)
    (c, send_id), (gated, gated_send) = claim_and_reserve(engine, campaign, 2)
    with engine.begin() as conn:
        assert q.commit_to_transmit(conn, gated, send_id=gated_send, now=T1)

    with engine.begin() as conn:
        assert not q.release(conn, replace(c, token="someone-else"), now=T1)
        assert q.release(conn, c, now=T1)
        assert not q.release(conn, gated, now=T1), "a transmission may have started: never requeue it"
    assert send_row(engine, send_id) is None
    row = enrollment(engine, c.enrollment_id)
    assert (row["status"], row["attempts"], row["claim_token"], row["claimed_by"]) == (
        "queued",
        0,
        None,
        None,
    )
    assert send_row(engine, gated_send)["status"] == "transmitting"  # type: ignore[index]
    assert enrollment(engine, gated.enrollment_id)["status"] == "sending"

    [again] = claim(engine, campaign, 5)
    assert again.enrollment_id == c.enrollment_id and again.attempts == 1


# --- the DB lock ---------------------------------------------------------------------------------


def test_take_slot_hands_out_at_most_n_slots_and_expired_ones_can_be_taken_over(engine: Engine) -> None:
    lease = timedelta(seconds=60)

    def take(conn: Connection, instance: str, now: datetime, slots: int = 2) -> int | None:
        return q.take_slot(conn, slots=slots, instance=instance, now=now, until=now + lease)

    with engine.begin() as conn:
        assert take(conn, "a", T0) == 0
        assert take(conn, "b", T0) == 1
        assert take(conn, "c", T0) is None, "two slots, two holders: the third stands by"
        assert take(conn, "a", T0 + timedelta(seconds=30)) == 0, "renewal keeps the same slot"
        assert take(conn, "c", T0 + lease - timedelta(seconds=1)) is None
        # b stopped renewing: its slot expired at T0+60; a renewed until T0+90.
        assert take(conn, "c", T0 + lease + timedelta(seconds=1)) == 1
        assert take(conn, "b", T0 + lease + timedelta(seconds=2)) is None, "b lost its slot to c"
        q.release_slot(conn, slot=0, instance="b")  # not b's: no effect
        assert take(conn, "b", T0 + lease + timedelta(seconds=3)) is None
        q.release_slot(conn, slot=0, instance="a")
        assert take(conn, "b", T0 + lease + timedelta(seconds=4)) == 0

    with engine.connect() as conn:
        held = dict(
            conn.execute(select(SenderSlot.__table__.c.slot, SenderSlot.__table__.c.instance_id)).all()
        )
    assert held == {0: "b", 1: "c"}

    now = T0 + timedelta(hours=1)  # everything above has expired
    with engine.begin() as conn:
        got = [take(conn, f"s{i}", now, slots=3) for i in range(6)]
    assert sorted(s for s in got if s is not None) == [0, 1, 2] and got.count(None) == 3


def test_the_holder_renews_live_leases_only_and_a_renewed_claim_is_not_the_reapers(engine: Engine) -> None:
    campaign = seed(engine, "renew", 3)
    (live, live_send), (stale, _), (other, _) = claim_and_reserve(engine, campaign, 3)
    later = T1 + LEASE - timedelta(seconds=5)
    set_enrollment(engine, stale.enrollment_id, lease_expires_at=later - timedelta(seconds=1))
    with engine.begin() as conn:
        renewed = q.renew_leases(
            conn, [live, stale, replace(other, token="not-ours")], now=later, lease_until=later + LEASE
        )
    assert renewed == 1  # the expired one may be a reaper's already; the other token is not ours
    assert enrollment(engine, live.enrollment_id)["lease_expires_at"] == later + LEASE
    assert enrollment(engine, other.enrollment_id)["lease_expires_at"] == T1 + LEASE

    with engine.begin() as conn:
        assert q.expired_claims(conn, now=AFTER_LEASE) == [
            (stale.enrollment_id, stale.token),
            (other.enrollment_id, other.token),
        ]
        # Listed as expired before the renewal landed: reap_one re-checks under its lock.
        assert q.reap_one(conn, enrollment_id=live.enrollment_id, token=live.token, now=AFTER_LEASE) is None
        assert q.reap_one(conn, enrollment_id=stale.enrollment_id, token=stale.token, now=AFTER_LEASE) == (
            EnrollmentStatus.QUEUED
        )
    assert enrollment(engine, live.enrollment_id)["status"] == "sending"
    with engine.begin() as conn:
        assert q.commit_to_transmit(conn, live, send_id=live_send, now=AFTER_LEASE)


def test_a_reap_racing_a_renewal_on_postgresql_is_all_or_nothing(pg_url: str) -> None:
    """The reaper locks the claim before touching anything: a reap that listed the claim as expired
    while the holder's renewal was committing waits for it and then leaves the claim alone, instead of
    deferring the send under a claim that lives on."""
    prepare_database(pg_url)
    engine = make_engine(pg_url)
    try:
        campaign = seed(engine, "race-renew", 1)
        [(c, send_id)] = claim_and_reserve(engine, campaign, 1)
        reaped: list[EnrollmentStatus | None] = []
        reaper_done = threading.Event()

        def reap() -> None:
            with engine.begin() as conn:  # its clock is past the lease: a skewed host, or a late renewal
                reaped.append(q.reap_one(conn, enrollment_id=c.enrollment_id, token=c.token, now=AFTER_LEASE))
            reaper_done.set()

        with engine.begin() as holder:
            assert q.renew_leases(holder, [c], now=T1 + LEASE / 2, lease_until=AFTER_LEASE + LEASE) == 1
            thread = threading.Thread(target=reap)
            thread.start()
            assert not reaper_done.wait(0.5), "the reap must wait for the renewal's row lock"
        thread.join(timeout=15)
        assert reaped == [None]
        assert enrollment(engine, c.enrollment_id)["status"] == "sending"
        assert send_row(engine, send_id)["status"] == "reserved"  # type: ignore[index]
        with engine.begin() as conn:
            assert q.commit_to_transmit(conn, c, send_id=send_id, now=AFTER_LEASE)
    finally:
        engine.dispose()


# --- concurrency (PostgreSQL: real row locks between two connections) ----------------------------


def test_concurrent_claims_on_postgresql_get_disjoint_sets(pg_url: str) -> None:
    prepare_database(pg_url)
    engine = make_engine(pg_url)
    try:
        campaign = seed(engine, "race", 30)
        rounds = 3
        barrier = threading.Barrier(2, timeout=15)
        got: dict[str, list[q.Claimed]] = {"a": [], "b": []}
        errors: list[BaseException] = []

        def worker(name: str) -> None:
            try:
                with engine.connect() as conn:
                    for _ in range(rounds):
                        with conn.begin():
                            barrier.wait()  # both transactions are open: claim at the same moment
                            got[name] += q.claim(
                                conn,
                                campaign_id=campaign,
                                limit=5,
                                token_prefix=f"{name}.",
                                instance=name,
                                now=T1,
                                lease_until=T1 + LEASE,
                            )
                            # Commit only once both have claimed: each claim ran while the other
                            # held its row locks, so SKIP LOCKED (not a lock wait) kept them apart.
                            barrier.wait()
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(name,)) for name in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []

        a, b = ({c.enrollment_id for c in got[n]} for n in ("a", "b"))
        assert len(got["a"]) == len(got["b"]) == 5 * rounds, "each claim of LIMIT 5 got exactly 5"
        assert a.isdisjoint(b)
        assert a | b == set(enrollment_ids(engine, campaign))
        with engine.connect() as conn:
            owners = dict(conn.execute(select(CL.id, CL.claimed_by).where(CL.campaign_id == campaign)).all())
        assert {i for i, o in owners.items() if o == "a"} == a
        assert {i for i, o in owners.items() if o == "b"} == b
    finally:
        engine.dispose()
