"""The sender service: register, hold a DB-lock slot, reap, and run send passes on a `schedule` tick."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import schedule
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import InterfaceError, OperationalError

from models import Campaign, CampaignStatus, EnrollmentStatus, SenderInstance, Variant
from sender import breakers, logs, metrics
from sender import claim as q
from sender.clock import Clock, DatabaseClock
from sender.config import Settings
from sender.pacing import local_day_start, window_open
from sender.sending import Identity, PassStats, Plan, Reservation, claim_batch, deliver_batch, release_all
from sender.transport import Transport
from sender.version import VERSION

log = logging.getLogger("sendguard.sender")

DEFAULT_BATCH = 32


@dataclass
class TickReport:
    stats: PassStats
    slot: int | None


class SenderService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        transport: Transport,
        *,
        clock: Clock | None = None,
        batch: int = DEFAULT_BATCH,
        lock_file: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.transport = transport
        self.clock = clock or DatabaseClock(engine)
        self.batch = max(1, batch)
        self.lock_file = lock_file
        self.ident = Identity(uuid.uuid4().hex[:16], socket.gethostname(), os.getpid())
        self.slot: int | None = None
        self.stop_event = threading.Event()
        self._in_hand: list[Reservation] = []
        self._last_heartbeat: datetime | None = None  # database time, as the leases it renews
        self.totals = PassStats()

    # --- lifecycle -------------------------------------------------------------------------------

    def register(self) -> None:
        logs.bind(instance=self.ident.instance_id)  # on every line this thread logs from now on
        now = self.clock.now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(SenderInstance.__table__).values(
                    id=self.ident.instance_id,
                    host=self.ident.host,
                    pid=self.ident.pid,
                    version=VERSION,
                    started_at=now,
                    heartbeat_at=now,
                    lock_file=self.lock_file,
                )
            )
        log.info(
            "sender %s registered (host %s, pid %s)", self.ident.instance_id, self.ident.host, self.ident.pid
        )

    def heartbeat(self) -> None:
        """Renew the slot lease and the instance heartbeat; without a slot this sender stands by."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            slot = q.take_slot(
                conn, slots=self.settings.max_senders, instance=self.ident.instance_id, now=now, until=until
            )
            conn.execute(
                update(SenderInstance.__table__)
                .where(SenderInstance.__table__.c.id == self.ident.instance_id)
                .values(heartbeat_at=now, slot=slot)
            )
        if slot != self.slot:
            log.info(
                "sender %s: %s",
                self.ident.instance_id,
                f"active in slot {slot}" if slot is not None else "standby",
            )
        self.slot = slot
        metrics.lock_state(slot)
        self._last_heartbeat = now

    def _heartbeat_if_due(self, in_flight: Sequence[Reservation] = ()) -> None:
        """During a long pass: keep the slot and the claims in hand (a batch may take longer than a
        lease to a slow server), and settle dead senders' claims without waiting for the next tick."""
        last = self._last_heartbeat
        if last is None or (self.clock.now() - last).total_seconds() >= self.settings.lease_seconds / 3:
            self.heartbeat()
            self.renew_claims(in_flight)
            self.reap()

    def renew_claims(self, in_flight: Sequence[Reservation] = ()) -> int:
        """Extend the leases of this pass's claims: those gated and not yet recorded (`in_flight`:
        transmitted, or about to be) and those not yet gated. Only these: a claim of an aborted pass
        is never renewed, so if it cannot be released its lease runs out and the reaper settles it."""
        held = [r.claimed for r in [*in_flight, *self._in_hand]]
        if not held:
            return 0
        now = self.clock.now()
        until = now + timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            renewed = q.renew_leases(conn, held, now=now, lease_until=until)
        if renewed < len(held):
            log.warning("renewed %d of %d claims in hand: the rest had expired", renewed, len(held))
        return renewed

    def _release_leftovers(self) -> None:
        """Claims a pass left in hand when the database failed under it: give them back (a CAS, safe
        whatever happened to them meanwhile) instead of waiting out their lease."""
        if self._in_hand:
            released = release_all(self.engine, self._in_hand, self.clock)
            log.info("released %d of %d claims left by an interrupted pass", released, len(self._in_hand))
            self._in_hand = []

    def shutdown(self) -> None:
        """Release what this sender holds: unsent claims, its slot, and mark the instance stopped."""
        try:
            released = release_all(self.engine, self._in_hand, self.clock)
            self._in_hand = []
            with self.engine.begin() as conn:
                if self.slot is not None:
                    q.release_slot(conn, slot=self.slot, instance=self.ident.instance_id)
                conn.execute(
                    update(SenderInstance.__table__)
                    .where(SenderInstance.__table__.c.id == self.ident.instance_id)
                    .values(stopped_at=self.clock.now(), slot=None)
                )
            self.slot = None
            if released:
                log.info("released %d unsent claims", released)
        finally:
            self.transport.close()

    def stop(self) -> None:
        self.stop_event.set()

    # --- work ------------------------------------------------------------------------------------

    def reap(self) -> q.Reaped:
        requeued = unknown = 0
        now = self.clock.now()
        with self.engine.connect() as conn:
            with conn.begin():
                expired = q.expired_claims(conn, now=now)
        for enrollment_id, token in expired:
            with self.engine.begin() as conn:
                reaped_at = self.clock.now()
                status = q.reap_one(conn, enrollment_id=enrollment_id, token=token, now=reaped_at)
                if status is EnrollmentStatus.UNKNOWN:
                    breakers.after_reaped_unknown(conn, enrollment_id, reaped_at)  # may pause: same tx
            if status is not None:
                logs.reaped(enrollment_id, status.value)
                if status.value == "unknown":
                    unknown += 1
                else:
                    requeued += 1
        metrics.reaped(requeued, unknown)
        if expired:
            log.warning("reaped %d expired claims: %d requeued, %d unknown", len(expired), requeued, unknown)
        return q.Reaped(requeued, unknown)

    def plans(self) -> list[Plan]:
        with self.engine.connect() as conn:
            with conn.begin():
                campaigns = [
                    Campaign.model_validate(dict(row._mapping))
                    for row in conn.execute(
                        select(Campaign.__table__).where(
                            Campaign.__table__.c.status == CampaignStatus.ACTIVE.value
                        )
                    )
                ]
                ids = [c.id for c in campaigns]
                variants: dict[int, dict[str, Variant]] = {i: {} for i in ids}
                if ids:
                    for row in conn.execute(
                        select(Variant.__table__).where(Variant.__table__.c.campaign_id.in_(ids))
                    ):
                        v = Variant.model_validate(dict(row._mapping))
                        variants[v.campaign_id][v.letter] = v
        return [Plan(c, variants[c.id]) for c in campaigns]

    def send_pass(self) -> PassStats:
        """Round-robin over active campaigns in their window until nothing is due within one interval."""
        stats = PassStats()
        if self.slot is None:
            return stats
        plans = self.plans()
        while not self.stop_event.is_set():
            progressed = False
            soonest: datetime | None = None
            for plan in plans:
                if self.stop_event.is_set() or self.slot is None:
                    break
                if not window_open(plan.campaign, self.clock.now()):
                    continue
                with metrics.claim_timer():
                    batch = claim_batch(self.engine, plan, self.ident, self.settings, self.clock, self.batch)
                if batch.wait_until is not None:
                    soonest = batch.wait_until if soonest is None else min(soonest, batch.wait_until)
                if batch.handled:
                    stats.skipped += batch.handled
                    progressed = True
                self._in_hand = list(batch.reservations)
                if self._in_hand:
                    stats.add(
                        deliver_batch(
                            self.engine, self.transport, plan, self._in_hand, self.settings, self.clock,
                            stop=self.stop_event, between=self._heartbeat_if_due,
                        )
                    )  # fmt: skip
                    progressed = True
                if self._in_hand and not self.stop_event.is_set():
                    # The batch ended early (SMTP authentication failed): hand back what never left.
                    stats.released += release_all(self.engine, self._in_hand, self.clock)
                    self._in_hand = []
                if stats.auth_failed:
                    log.error("SMTP authentication failed: not sending until the next tick")
                    return stats
            if progressed:
                continue
            # Nothing claimable now: wait for a paced turn if it comes before the next tick.
            if soonest is None:
                break
            wait = (soonest - self.clock.now()).total_seconds()
            if wait > self.interval:
                break
            self.stop_event.wait(max(0.0, wait))
            self._heartbeat_if_due()
        return stats

    def safe_tick(self) -> None:
        """The scheduled job: a database outage skips this tick instead of killing the sender; every
        step is a compare-and-set, so whatever was half-done is settled by the record retry or the reaper."""
        try:
            self.tick()
        except (OperationalError, InterfaceError) as exc:
            log.warning("tick skipped: database unavailable (%s)", exc.__class__.__name__)
            self.engine.dispose()

    def tick(self) -> TickReport:
        self.heartbeat()
        self._release_leftovers()
        reaped = self.reap()
        stats = self.send_pass()
        self.totals.add(stats)
        metrics.ticked()
        logs.tick(stats, slot=self.slot, reaped_requeued=reaped.requeued, reaped_unknown=reaped.unknown)
        return TickReport(stats, self.slot)

    def pending(self) -> int:
        """Enrollments that keep `--until-idle` running: sending, or queued in an open, under-limit campaign."""
        now = self.clock.now()
        total = 0
        plans = self.plans()  # before opening the transaction: SQLite allows one writer connection
        with self.engine.connect() as conn:
            with conn.begin():
                total += conn.execute(_SENDING_ACTIVE).scalar_one()
                for plan in plans:
                    c = plan.campaign
                    if not window_open(c, now):
                        continue
                    if c.daily_limit is not None and (
                        q.sends_since(conn, campaign_id=c.id, day_start=local_day_start(c, now))
                        >= c.daily_limit
                    ):
                        continue
                    total += conn.execute(_QUEUED_IN_CAMPAIGN, {"campaign_id": c.id}).scalar_one()
        return total

    def _idle(self) -> bool:
        try:
            return self.pending() == 0
        except (OperationalError, InterfaceError):
            return False

    # --- the loop --------------------------------------------------------------------------------

    interval: float = 5.0

    def run(self, *, interval: float = 5.0, once: bool = False, until_idle: bool = False) -> None:
        self.interval = interval
        self.register()
        try:
            if once:
                self.tick()
                return
            scheduler = schedule.Scheduler()
            scheduler.every(interval).seconds.do(self.safe_tick)
            scheduler.run_all()
            while not self.stop_event.is_set():
                if until_idle and self._idle():
                    log.info("idle: no enrollment of an active campaign is queued or sending")
                    return
                scheduler.run_pending()
                idle = scheduler.idle_seconds
                self.stop_event.wait(min(interval, max(0.0, idle if idle is not None else interval)))
        finally:
            self.shutdown()


_SENDING_ACTIVE = text("""
SELECT count(*) FROM campaign_lead AS cl JOIN campaign AS c ON c.id = cl.campaign_id
WHERE c.status = 'active' AND cl.status = 'sending'
""")

_QUEUED_IN_CAMPAIGN = text(
    "SELECT count(*) FROM campaign_lead WHERE campaign_id = :campaign_id AND status = 'queued'"
)
