"""Circuit breakers: when to stop a campaign on its own, before a human has looked.

Each breaker runs inside the transaction that records the event that trips it (the guard firing, a
hard failure, an `unknown`, a refused login) and pauses the campaign there (campaigns.auto_pause). The
gate lets nothing transmit for a campaign that is not active, so once that transaction commits no
transmission of the campaign starts; the one already on the wire elsewhere may finish. Resuming is the
operator's `campaign resume`, as after any pause.

Settings are per campaign (the `[breakers]` table of the campaign file, columns `breaker_*`), read
fresh on each check so a `campaign create --update` applies to running senders. The checks only run
on bad outcomes: a `sent` costs nothing here.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from models import Campaign, CampaignLead
from sender import claim as q
from sender.campaigns import auto_pause
from sender.transport import Outcome, SendResult

log = logging.getLogger("sendguard.sender")

C = Campaign.__table__.c


class Breaker(enum.StrEnum):
    DUPLICATE = "duplicate"  # the duplicate guard fired: something races
    HARD_FAILURES = "hard_failures"  # too many 5xx among the last sends: bad list or blocked sender
    AUTH = "auth"  # the SMTP server refused our credentials: stop hammering it
    UNKNOWNS = "unknowns"  # too many sends of unknown fate: the connection to the server is unreliable


@dataclass(frozen=True)
class Settings:
    duplicate: bool
    hard_failures: int  # 0 = off
    hard_failures_window: int
    auth: bool
    unknowns: int  # 0 = off


def settings(conn: Connection, campaign_id: int) -> Settings | None:
    row = conn.execute(
        select(
            C.breaker_duplicate,
            C.breaker_hard_failures,
            C.breaker_hard_failures_window,
            C.breaker_auth,
            C.breaker_unknowns,
        ).where(C.id == campaign_id)
    ).first()
    return (
        None if row is None else Settings(bool(row[0]), int(row[1]), int(row[2]), bool(row[3]), int(row[4]))
    )


def _trip(conn: Connection, campaign_id: int, breaker: Breaker, reason: str, now: datetime) -> bool:
    tripped = auto_pause(conn, campaign_id, breaker=breaker.value, reason=reason, now=now)
    if tripped:
        log.error("campaign %s auto-paused by breaker %s: %s", campaign_id, breaker.value, reason)
    return tripped


def on_duplicate_prevented(conn: Connection, c: q.Claimed, now: datetime) -> bool:
    """The guard just refused a second live send for this key. True if that paused the campaign."""
    config = settings(conn, c.campaign_id)
    if config is None or not config.duplicate:
        return False
    reason = (
        f"duplicate guard fired: lead {c.lead_id} step {c.step} (enrollment {c.enrollment_id}) already has "
        "a live send; another sender may be racing this one"
    )
    return _trip(conn, c.campaign_id, Breaker.DUPLICATE, reason, now)


def on_auth_failure(
    conn: Connection, c: q.Claimed, *, send_id: int, result: SendResult, now: datetime
) -> bool:
    """A refused SMTP login, with the auth breaker on: give the claim back untouched (authentication
    comes before MAIL FROM, so nothing left the host) and pause. True when it did both, and the caller
    must not record the attempt; False leaves the usual record (deferred, with backoff) to the caller."""
    if not result.auth_failed:
        return False
    config = settings(conn, c.campaign_id)
    if config is None or not config.auth:
        return False
    q.requeue_untransmitted(
        conn, c, send_id=send_id, reason="auth_failed", code=result.code, reply=result.reply, now=now
    )
    # The reply is the server's text (scrubbed of the password by the transport), never the URL.
    _trip(conn, c.campaign_id, Breaker.AUTH, f"SMTP authentication failed: {result.reply}", now)
    return True


def after_record(conn: Connection, c: q.Claimed, result: SendResult, now: datetime) -> bool:
    """After an outcome was recorded in this transaction: trip on hard failures or unknowns."""
    if result.outcome is Outcome.FAILED:
        return _check_hard_failures(conn, c.campaign_id, now)
    if result.outcome is Outcome.UNKNOWN:
        return _check_unknowns(conn, c.campaign_id, now)
    return False


def after_reaped_unknown(conn: Connection, enrollment_id: int, now: datetime) -> bool:
    """The reaper just turned an expired transmission into `unknown` in this transaction."""
    campaign_id = conn.execute(
        select(CampaignLead.__table__.c.campaign_id).where(CampaignLead.__table__.c.id == enrollment_id)
    ).scalar_one_or_none()
    return campaign_id is not None and _check_unknowns(conn, campaign_id, now)


def _check_hard_failures(conn: Connection, campaign_id: int, now: datetime) -> bool:
    config = settings(conn, campaign_id)
    if config is None or config.hard_failures <= 0:
        return False
    window = config.hard_failures_window
    failed = q.recent_hard_failures(conn, campaign_id=campaign_id, window=window)
    if failed < config.hard_failures:
        return False
    reason = f"{failed} hard failures (5xx) among the last {window} sends (threshold {config.hard_failures})"
    return _trip(conn, campaign_id, Breaker.HARD_FAILURES, reason, now)


def _check_unknowns(conn: Connection, campaign_id: int, now: datetime) -> bool:
    config = settings(conn, campaign_id)
    if config is None or config.unknowns <= 0:
        return False
    unknown = q.unknowns(conn, campaign_id=campaign_id)
    if unknown < config.unknowns:
        return False
    reason = (
        f"{unknown} sends of unknown outcome since the campaign was last started or resumed "
        f"(threshold {config.unknowns}); resolve them with `sendguard review`"
    )
    return _trip(conn, campaign_id, Breaker.UNKNOWNS, reason, now)
