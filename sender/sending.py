"""One pass of the claim-and-send protocol for one campaign: claim+reserve, then gate, transmit, record.

The steps and their order are the guarantee (DESIGN.md); the SQL for each lives in sender/claim.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import Connection, Engine, insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from models import Campaign, CampaignEvent, EnrollmentStatus, SendStatus, Variant
from sender import breakers, logs, metrics
from sender import claim as q
from sender import failpoints as fp
from sender.clock import Clock
from sender.config import Settings
from sender.message import Outgoing, message_id, prepare_message
from sender.pacing import local_day_start
from sender.templates import render
from sender.transport import Ahead, Envelope, InFlight, Outcome, SendResult, SmtpTransport, Transport

log = logging.getLogger("sendguard.sender")


@dataclass(frozen=True)
class Identity:
    instance_id: str
    host: str
    pid: int


@dataclass(frozen=True)
class Plan:
    """An active campaign as the sender needs it for one pass: its row and its variants by letter."""

    campaign: Campaign
    variants: dict[str, Variant]

    @functools.cached_property
    def envelope_from(self) -> str:
        return parseaddr(self.campaign.from_addr)[1]

    @functools.cached_property
    def headers(self) -> dict[str, str | None]:
        """The campaign's part of every message, read off the ORM row once per pass, not per message."""
        c = self.campaign
        return {
            "from_addr": c.from_addr,
            "reply_to": c.reply_to,
            "unsubscribe": c.unsubscribe,
            "campaign": c.name,
        }

    @functools.cached_property
    def templates(self) -> dict[str, tuple[str, str]]:
        """Variant letter -> (subject, body) template sources."""
        return {letter: (v.subject, v.body) for letter, v in self.variants.items()}

    @property
    def paced(self) -> bool:
        return self.campaign.min_interval_seconds > 0 or self.campaign.daily_limit is not None


@dataclass(frozen=True)
class Reservation:
    claimed: q.Claimed
    send_id: int
    lead: q.LeadData
    message_id: str


@dataclass
class BatchResult:
    reservations: list[Reservation] = field(default_factory=list)
    handled: int = 0  # claims ended without a send (suppressed, duplicate prevented)
    wait_until: datetime | None = None  # pacing: the campaign's next turn
    limit_reached: bool = False  # daily limit: nothing more today


@dataclass
class PassStats:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0
    released: int = 0
    auth_failed: bool = False

    def add(self, other: PassStats) -> None:
        for name in ("sent", "failed", "deferred", "unknown", "skipped", "released"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.auth_failed = self.auth_failed or other.auth_failed

    @property
    def total(self) -> int:
        return self.sent + self.failed + self.deferred + self.unknown + self.skipped


def claim_batch(
    engine: Engine, plan: Plan, ident: Identity, settings: Settings, clock: Clock, limit: int
) -> BatchResult:
    """Step 1 and 2 in one short transaction: claim up to `limit` enrollments and reserve each."""
    campaign = plan.campaign
    result = BatchResult()
    with engine.connect() as conn:
        tx = conn.begin()
        now = clock.now()
        if plan.paced:
            interval = campaign.min_interval_seconds + random.uniform(0, campaign.jitter_seconds)
            if not q.take_pacing_turn(
                conn, campaign_id=campaign.id, now=now, next_at=now + timedelta(seconds=interval)
            ):
                tx.rollback()
                result.wait_until = _next_turn(engine, campaign.id)
                return result
            if campaign.min_interval_seconds > 0:
                limit = 1
            if campaign.daily_limit is not None:
                used = q.sends_since(conn, campaign_id=campaign.id, day_start=local_day_start(campaign, now))
                limit = min(limit, campaign.daily_limit - used)
                if limit <= 0:
                    tx.rollback()
                    result.limit_reached = True
                    return result
        claimed = q.claim(
            conn,
            campaign_id=campaign.id,
            limit=limit,
            token_prefix=f"{ident.instance_id}.{random.getrandbits(48):012x}.",
            instance=ident.instance_id,
            now=now,
            lease_until=now + timedelta(seconds=settings.lease_seconds),
        )
        if fp.ENABLED:
            fp.hit(fp.AFTER_CLAIM)  # claimed but uncommitted: a crash here must roll it all back
        if not claimed:
            tx.rollback()  # gives the pacing turn back: nothing was due
            return result
        leads = q.lead_data(conn, [c.lead_id for c in claimed])
        to_reserve: list[tuple[q.Claimed, str]] = []
        for c in claimed:
            if leads[c.lead_id].suppressed:
                q.finish_unsent(conn, c, status=EnrollmentStatus.SKIPPED, reason="suppressed", now=now)
                result.handled += 1
            else:
                to_reserve.append((c, message_id(c.campaign_id, c.lead_id, c.step, campaign.from_addr)))
        reserved = q.reserve_many(
            conn, to_reserve, instance=ident.instance_id, host=ident.host, pid=ident.pid, now=now
        )
        for c, mid in to_reserve:
            send_id = reserved.get(c.enrollment_id)
            if send_id is None:
                _guard_fired(conn, c, ident, now)
                metrics.guard_fired(campaign.name)
                result.handled += 1
            else:
                result.reservations.append(Reservation(c, send_id, leads[c.lead_id], mid))
        tx.commit()
    logs.claimed(campaign.name, claimed, leads, result.reservations)
    return result


def _guard_fired(conn: Connection, c: q.Claimed, ident: Identity, now: datetime) -> None:
    """A live send_log row already exists for this key: never send, and leave a trace of the race."""
    q.finish_unsent(conn, c, status=EnrollmentStatus.SKIPPED, reason="duplicate_prevented", now=now)
    conn.execute(
        insert(CampaignEvent.__table__).values(
            campaign_id=c.campaign_id,
            kind="duplicate_prevented",
            actor=f"sender:{ident.instance_id}",
            reason=f"enrollment {c.enrollment_id} (step {c.step}) already has a live send",
            lead_id=c.lead_id,
            instance_id=ident.instance_id,
            created_at=now,
        )
    )
    log.warning("duplicate prevented: campaign %s lead %s step %s", c.campaign_id, c.lead_id, c.step)
    breakers.on_duplicate_prevented(conn, c, now)  # may pause: commits with the claim transaction


def _next_turn(engine: Engine, campaign_id: int) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(
            Campaign.__table__.select()
            .with_only_columns(Campaign.__table__.c.next_send_at)
            .where(Campaign.__table__.c.id == campaign_id)
        ).scalar_one_or_none()


class _GaveUp(Exception):
    """The database stayed unreachable for a whole lease: stop this batch, the reaper settles it."""


def deliver(
    engine: Engine,
    transport: Transport,
    plan: Plan,
    r: Reservation,
    settings: Settings,
    clock: Clock,
) -> PassStats:
    """Steps 3-5 for one reservation: gate, transmit, record."""
    return deliver_batch(engine, transport, plan, [r], settings, clock)


def deliver_batch(
    engine: Engine,
    transport: Transport,
    plan: Plan,
    pending: list[Reservation],
    settings: Settings,
    clock: Clock,
    *,
    stop: threading.Event | None = None,
    between: Callable[[list[Reservation]], None] | None = None,
) -> PassStats:
    """Steps 3-5 for a batch of reservations, in order: gate, transmit, record each.

    The record of one message and the gate of the next are one transaction (the hand-over): the next
    message may only leave once its gate is durable anyway, so one commit per message does what two
    did, with the same crash states (an uncommitted hand-over leaves the previous send `transmitting`
    and the next `reserved`, exactly as a crash between two separate transactions would). `pending`
    is consumed from the front as each reservation is gated, released or failed, so the caller can
    give back what is left on shutdown. `between` runs after each hand-over with the reservations
    gated and not yet recorded (the service's heartbeat renews their leases and those of `pending`);
    `stop` ends the batch once the messages already transmitted are recorded.

    On an SMTP connection that is already open, the next message's envelope goes out while the
    hand-over commits: with PIPELINING, MAIL, RCPT and DATA written behind the previous payload and
    their replies read after the commit; without it, MAIL and RCPT on a helper thread. With
    PIPELINING the previous payload's reply is read after the commit too, so the server's work on one
    message and the database's on the hand-over overlap. Such a gate was committed before the
    previous outcome was known. If that reply had not arrived by the commit (the gate aged while the
    sender waited on the server), or it is an outcome a breaker looks at, then before the payload leaves
    that outcome is recorded first and the campaign is read again: a pause in between gives the message
    back untransmitted (`requeue_untransmitted`; the open DATA is closed, never ended). The message itself
    always waits for its gate, and a refused gate gives the envelope up (RSET, or closing the
    connection with DATA open), so the server never receives a message the database did not let go;
    after a refusal the rest of the batch goes gate first. A fresh connection is opened after the
    gate, as before: a sender that is refused its first gate (a fenced zombie) never talks to the
    server.
    """
    stats = PassStats()
    done: list[tuple[Reservation, SendResult]] = []  # outcomes known, not yet recorded
    flying: tuple[Reservation, InFlight, float] | None = None  # payload out, reply unread
    helper: ThreadPoolExecutor | None = None
    early: Future[Envelope | SendResult] | Ahead | None = None  # the upcoming message's envelope, in flight
    # After a refused gate (usually a pause: every later gate of the batch is refused too), envelopes
    # wait for their gate again, so a paused campaign stops talking to the server at once.
    ahead_ok = True
    conn = engine.connect()
    try:
        while True:
            # An authentication failure ends the batch: every further message would fail the same way.
            stopping = (stop is not None and stop.is_set()) or stats.auth_failed
            upcoming = pending[0] if pending and not stopping else None
            if not done and flying is None and upcoming is None:
                return stats
            msg = None
            render_error: str | None = None
            if upcoming is not None:
                try:
                    msg = _render(plan, upcoming)
                except Exception as exc:  # a template that cannot render for this lead: never transmit it
                    render_error = str(exc)[:500]
                if fp.ENABLED:
                    fp.hit(fp.AFTER_RESERVE)
            started = time.monotonic()
            if ahead_ok and msg is not None and isinstance(transport, SmtpTransport) and transport.connected:
                assert upcoming is not None
                if transport.pipelining:  # written now, its replies read after the hand-over: no thread
                    early = transport.write_envelope(msg, plan.envelope_from, upcoming.lead.email)
                elif flying is None:
                    helper = helper or ThreadPoolExecutor(1, thread_name_prefix="sendguard-envelope")
                    early = helper.submit(
                        contextvars.copy_context().run,  # its log lines carry this thread's bound fields
                        transport.open_envelope, msg, plan.envelope_from, upcoming.lead.email,
                    )  # fmt: skip
            gate = _Gate.NONE
            if done or upcoming is not None:
                try:
                    conn, gate = _hand_over(conn, engine, done, upcoming, render_error, settings, clock)
                except _GaveUp:
                    return stats
                _recorded(stats, done)
            waited = record_first = False
            if flying is not None:  # the previous payload's reply, read while the hand-over committed
                # A reply already here when the gate committed is read without waiting on the server:
                # the payload then follows its gate as closely as without PIPELINING. One still on its
                # way leaves the gate to age, and an outcome a breaker looks at must be recorded before
                # the next payload: either way the gate is checked again.
                waited = not flying[1].arrived()
                done.append(_reply(plan, flying))
                flying = None
                record_first = not _fits_one_statement(conn, done, None)
            if upcoming is None:
                continue
            pending.pop(0)
            c = upcoming.claimed
            if gate is _Gate.GATED and (waited or record_first):
                try:
                    conn, gate = _check_again(
                        conn, engine, stats, done, upcoming, settings, clock, record_first=record_first
                    )
                except _GaveUp:
                    return stats  # the reaper settles the gated claim (`unknown`: it cannot tell)
            if gate is _Gate.FAILED:
                stats.failed += 1
                logs.transition("failed", c, level=logging.WARNING, reason="template_error")
            elif gate in (_Gate.RELEASED, _Gate.WITHDRAWN):
                # Paused, or our claim was taken over: nothing left this host, so it went back untouched.
                early = _abandon(transport, early)
                ahead_ok = False
                stats.released += 1
                reason = "gate_refused" if gate is _Gate.RELEASED else WITHDRAWN
                logs.transition("released", c, reason=reason)
            else:
                if logs.log.isEnabledFor(logs.STEP):
                    address = logs.recipient(upcoming.lead.email)
                    logs.transition(
                        "transmitting", c, level=logs.STEP, send_id=upcoming.send_id, recipient=address
                    )
                if fp.ENABLED:
                    fp.hit(fp.AFTER_GATE)
                assert msg is not None
                sent = _transmit(transport, plan, upcoming, msg, early)
                early = None
                if isinstance(sent, InFlight):
                    flying = (upcoming, sent, started)
                else:
                    done.append(_transmitted(plan, upcoming, sent, started))
                    stats.auth_failed = stats.auth_failed or sent.auth_failed
            if between is not None:
                between([r for r, _ in done] + ([flying[0]] if flying is not None else []))
    finally:
        with contextlib.suppress(Exception):  # never mask what ended the batch
            _abandon(transport, early)
        with contextlib.suppress(Exception):  # read a reply still on its way: the connection stays usable
            if flying is not None:
                flying[1].result()
        if helper is not None:
            helper.shutdown(wait=True)
        conn.close()


def _transmit(
    transport: Transport,
    plan: Plan,
    r: Reservation,
    msg: Outgoing,
    early: Future[Envelope | SendResult] | Ahead | None,
) -> SendResult | InFlight:
    """Step 4, after the gate: the envelope (opened ahead, or now), then the payload. On a PIPELINING
    connection the payload's reply is left in flight, to be read after the next hand-over."""
    if not isinstance(transport, SmtpTransport):
        return transport.send(msg, plan.envelope_from, r.lead.email)
    opened = (
        early.result()
        if early is not None
        else transport.open_envelope(msg, plan.envelope_from, r.lead.email)
    )
    if isinstance(opened, SendResult):
        return opened
    return transport.write_payload(opened)


def _transmitted(
    plan: Plan, r: Reservation, result: SendResult, started: float
) -> tuple[Reservation, SendResult]:
    metrics.transmitted(plan.campaign.name, result.outcome.value, time.monotonic() - started)
    if fp.ENABLED and result.outcome is Outcome.SENT:
        fp.hit(fp.AFTER_250)
    return r, result


def _reply(plan: Plan, flying: tuple[Reservation, InFlight, float]) -> tuple[Reservation, SendResult]:
    r, inflight, started = flying
    return _transmitted(plan, r, inflight.result(), started)


def _recorded(stats: PassStats, done: list[tuple[Reservation, SendResult]]) -> None:
    for previous in done:
        _count(stats, previous[1])
        logs.outcome(*previous)
    done.clear()


# The reason a withdrawn gate leaves on the enrollment (and in the log line).
WITHDRAWN = "withdrawn_before_payload"


def _withdraw(conn: Connection, r: Reservation, now: datetime) -> None:
    q.requeue_untransmitted(
        conn, r.claimed, send_id=r.send_id, reason=WITHDRAWN, code=None,
        reply="gate withdrawn before the message left (campaign paused, or the claim expired); not transmitted",
        now=now,
    )  # fmt: skip


def _abandon(transport: Transport, early: Future[Envelope | SendResult] | Ahead | None) -> None:
    """An envelope whose message must not be sent: wait for it, and give it up if it was accepted."""
    if early is None:
        return None
    opened = early.result()
    if isinstance(opened, Envelope):
        assert isinstance(transport, SmtpTransport)
        transport.abandon(opened)
    return None


class _Gate(enum.Enum):
    NONE = "none"  # nothing to gate: the last record of a batch
    GATED = "gated"  # `transmitting` is durable: the message may leave
    RELEASED = "released"  # the gate refused (paused, lease lost): handed back untouched
    WITHDRAWN = "withdrawn"  # passed, then no longer stood before the payload left: handed back
    FAILED = "failed"  # the template failed for this lead: never transmitted


def _count(stats: PassStats, result: SendResult) -> None:
    match result.outcome:
        case Outcome.SENT:
            stats.sent += 1
        case Outcome.FAILED:
            stats.failed += 1
        case Outcome.DEFERRED:
            stats.deferred += 1
        case Outcome.UNKNOWN:
            stats.unknown += 1


def _hand_over(
    conn: Connection,
    engine: Engine,
    done: list[tuple[Reservation, SendResult]],
    upcoming: Reservation | None,
    render_error: str | None,
    settings: Settings,
    clock: Clock,
) -> tuple[Connection, _Gate]:
    """Step 5 for the messages in `done` and step 3 for the next, in one transaction, retried on
    database errors (`_retrying`). Returns the connection to go on with (a new one after a reconnect)."""

    def once(conn: Connection) -> _Gate:
        if _fits_one_statement(conn, done, render_error):
            return _hand_over_alone(conn, done[0] if done else None, upcoming, settings, clock)
        with conn.begin():
            now = clock.now()
            for previous in done:
                _record(conn, *previous, settings, now)
                if fp.ENABLED:
                    fp.hit(fp.WHILE_RECORDING)  # the UPDATEs ran, the COMMIT has not
            if upcoming is None:
                return _Gate.NONE
            c = upcoming.claimed
            if render_error is not None:
                q.finish_unsent(
                    conn, c, status=EnrollmentStatus.FAILED, reason="template_error", now=now,
                    error=render_error,
                )  # fmt: skip
                return _Gate.FAILED
            if q.commit_to_transmit(conn, c, send_id=upcoming.send_id, now=now):
                return _Gate.GATED
            q.release(conn, c, now=now)
            return _Gate.RELEASED

    if done:
        what = f"recording enrollment {done[0][0].claimed.enrollment_id}"
    else:
        what = f"gating enrollment {upcoming.claimed.enrollment_id if upcoming else '?'}"
    return _retrying(conn, engine, settings, what, once)


def _check_again(
    conn: Connection,
    engine: Engine,
    stats: PassStats,
    done: list[tuple[Reservation, SendResult]],
    upcoming: Reservation,
    settings: Settings,
    clock: Clock,
    *,
    record_first: bool,
) -> tuple[Connection, _Gate]:
    """A gate committed while the previous payload's reply was on its way: before this payload leaves,
    record what a breaker must see (`record_first`: it may pause the campaign) and read the gate and
    the campaign again (`claim.gate_stands`). A pause in between, or a reaper that took the claim,
    withdraws the gate: nothing of this message left, so it goes back to the queue. Retried like a
    hand-over: the record and the withdrawal are compare-and-sets, and a gate withdrawn by an attempt
    whose COMMIT was lost no longer stands."""
    c = upcoming.claimed

    def once(conn: Connection) -> _Gate:
        if not record_first:
            if q.gate_stands(conn, c, send_id=upcoming.send_id):
                return _Gate.GATED
            with conn.begin():
                _withdraw(conn, upcoming, clock.now())
            return _Gate.WITHDRAWN
        with conn.begin():
            now = clock.now()
            for previous in done:
                _record(conn, *previous, settings, now)
            if q.gate_stands(conn, c, send_id=upcoming.send_id):
                return _Gate.GATED
            _withdraw(conn, upcoming, now)
            return _Gate.WITHDRAWN

    conn, gate = _retrying(conn, engine, settings, f"checking enrollment {c.enrollment_id}", once)
    if record_first:
        _recorded(stats, done)
    return conn, gate


def _retrying(
    conn: Connection, engine: Engine, settings: Settings, what: str, once: Callable[[Connection], _Gate]
) -> tuple[Connection, _Gate]:
    """Run one protocol transaction, retried on database errors: every statement in it is a
    compare-and-set, so a retry after a lost COMMIT changes nothing twice; giving up is safe too (the
    reaper marks a transmitted send unknown, never resends it, and requeues a claim that never left).
    Returns the connection to go on with (a new one after a reconnect)."""
    deadline = time.monotonic() + max(settings.lease_seconds, 30.0)
    delay = 0.05
    while True:
        try:
            if conn.closed:  # after a lost connection: reconnecting may fail too, and is retried
                conn = engine.connect()
            return conn, once(conn)
        except DBAPIError as exc:
            if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)):
                raise  # a bug, not an outage: retrying would not help
            if time.monotonic() > deadline:
                log.error("giving up %s: %s", what, exc.__class__.__name__)
                raise _GaveUp from exc
            log.warning("%s failed (%s), retrying", what, exc.__class__.__name__)
            time.sleep(delay)  # backoff between reconnect attempts, not synchronisation
            delay = min(delay * 2, 2.0)
            conn.close()


def _fits_one_statement(
    conn: Connection, done: list[tuple[Reservation, SendResult]], render_error: str | None
) -> bool:
    """Nothing to do but one record and the gate: an outcome no breaker or suppression looks at, a
    message that rendered. (The `while_recording` failpoint needs the statements and the COMMIT apart.)"""
    if render_error is not None or len(done) > 1:
        return False
    if fp.ENABLED and fp.WHILE_RECORDING in fp.active():
        return False
    if not done:
        return True
    result = done[0][1]
    return result.outcome in (Outcome.SENT, Outcome.DEFERRED) and not (
        result.auth_failed or result.hard_bounce
    )


def _hand_over_alone(
    conn: Connection,
    previous: tuple[Reservation, SendResult] | None,
    upcoming: Reservation | None,
    settings: Settings,
    clock: Clock,
) -> _Gate:
    """The common hand-over, on the driver's connection (`claim.hand_over_alone`: on PostgreSQL one
    statement, one round trip where BEGIN, two statements and COMMIT took four). A refused gate is
    released in a second transaction, as a crash between the two would leave it: `reserved`, for the
    reaper to requeue."""
    now = clock.now()
    record = None if previous is None else _record_params(*previous, settings, now)
    gate = (upcoming.claimed, upcoming.send_id) if upcoming is not None else None
    passed = q.hand_over_alone(conn, record, gate, now)
    if upcoming is None:
        return _Gate.NONE
    if passed:
        return _Gate.GATED
    with conn.begin():
        q.release(conn, upcoming.claimed, now=clock.now())
    return _Gate.RELEASED


def _render(plan: Plan, r: Reservation) -> Outgoing:
    lead = r.lead
    subject, body = plan.templates[r.claimed.variant]
    context: dict[str, object] = dict(json.loads(lead.fields)) if lead.fields and lead.fields != "{}" else {}
    context["email"] = lead.email
    if lead.first_name is not None:
        context["first_name"] = lead.first_name
    if lead.last_name is not None:
        context["last_name"] = lead.last_name
    return prepare_message(
        to_addr=lead.email,
        subject=render(subject, context),
        body=render(body, context),
        message_id=r.message_id,
        **plan.headers,  # type: ignore[arg-type]
    )


def outcome_states(
    result: SendResult, attempts: int, settings: Settings, now: datetime
) -> tuple[SendStatus, EnrollmentStatus, str | None, datetime]:
    """Step 5's table: what an SMTP outcome means for the send_log row and the enrollment."""
    match result.outcome:
        case Outcome.SENT:
            return SendStatus.SENT, EnrollmentStatus.SENT, None, now
        case Outcome.FAILED:
            reason = "hard_bounce" if result.hard_bounce else "rejected"
            return SendStatus.FAILED, EnrollmentStatus.FAILED, reason, now
        case Outcome.UNKNOWN:
            return SendStatus.UNKNOWN, EnrollmentStatus.UNKNOWN, "ambiguous_smtp_outcome", now
        case Outcome.DEFERRED:
            if attempts >= settings.max_attempts:
                return SendStatus.DEFERRED, EnrollmentStatus.FAILED, "max_attempts", now
            backoff = settings.retry_base_seconds * (2 ** max(0, attempts - 1))
            return SendStatus.DEFERRED, EnrollmentStatus.QUEUED, "deferred", now + timedelta(seconds=backoff)
    raise AssertionError(result.outcome)


def _record_params(r: Reservation, result: SendResult, settings: Settings, now: datetime) -> dict[str, Any]:
    send_status, status, reason, next_at = outcome_states(result, r.claimed.attempts, settings, now)
    return q.record_params(
        r.claimed, send_id=r.send_id, send_status=send_status, enrollment_status=status, reason=reason,
        code=result.code, reply=result.reply, now=now, next_at=next_at,
    )  # fmt: skip


def _record(conn: Connection, r: Reservation, result: SendResult, settings: Settings, now: datetime) -> None:
    """Step 5: the SMTP outcome onto both rows (idempotent), and what it may trip."""
    if breakers.on_auth_failure(conn, r.claimed, send_id=r.send_id, result=result, now=now):
        return  # claim given back and campaign paused: the lead goes out after the resume
    q.record(conn, _record_params(r, result, settings, now))
    if result.hard_bounce:
        q.suppress(conn, email=r.lead.email, reason="hard_bounce", detail=result.reply, now=now)
    breakers.after_record(conn, r.claimed, result, now)  # may pause: same transaction


def release_all(engine: Engine, reservations: list[Reservation], clock: Clock) -> int:
    """On shutdown: give back every reservation that never reached the gate."""
    released = 0
    if not reservations:
        return 0
    with engine.begin() as conn:
        for r in reservations:
            released += q.release(conn, r.claimed, now=clock.now())
            logs.transition("released", r.claimed, reason="shutdown")
    return released
