"""Read-side views for the CLI: `status`, `leads list`, `review list` (CLI.md JSON shapes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Integer, String, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

from models import EnrollmentStatus
from sender.campaigns import get_campaign

STATES = [s.value for s in EnrollmentStatus]
_TS = UTCDateTime()


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


# Every enrollment counts in exactly one state; one waiting for a retry is `queued`.
_COUNTS = text("""
SELECT c.name, c.status, cl.status AS state, count(cl.id), c.paused_by, c.pause_reason
FROM campaign AS c LEFT JOIN campaign_lead AS cl ON cl.campaign_id = c.id
GROUP BY c.name, c.status, cl.status, c.paused_by, c.pause_reason
ORDER BY c.name
""")

_SENDERS = (
    text("""
SELECT id, host, pid, heartbeat_at, stopped_at, slot, version, started_at FROM sender_instance
WHERE stopped_at IS NULL OR heartbeat_at >= :since
ORDER BY started_at
""")
    .bindparams(bindparam("since", type_=_TS))
    .columns(
        id=String,
        host=String,
        pid=Integer,
        heartbeat_at=_TS,
        stopped_at=_TS,
        slot=Integer,
        version=String,
        started_at=_TS,
    )
)


def status(engine: Engine, *, now: datetime, lease_seconds: float) -> dict[str, object]:
    campaigns: dict[str, dict[str, object]] = {}
    with engine.connect() as conn:
        for name, cstatus, state, n, paused_by, pause_reason in conn.execute(_COUNTS):
            # paused_by `breaker:<name>` marks an automatic pause (sender/breakers.py).
            entry = campaigns.setdefault(
                name,
                {"name": name, "status": cstatus, "counts": dict.fromkeys(STATES, 0), "paused_by": paused_by,
                 "pause_reason": pause_reason},
            )  # fmt: skip
            if state is not None:
                entry["counts"][state] = int(n)  # type: ignore[index]
        senders = []
        since = now - timedelta(days=1)
        for sid, host, pid, heartbeat, stopped, slot, version, started in conn.execute(
            _SENDERS, {"since": since}
        ):
            alive = (
                stopped is None
                and heartbeat is not None
                and (now - heartbeat).total_seconds() <= lease_seconds
            )
            senders.append(
                {
                    "instance": sid,
                    "host": host,
                    "pid": pid,
                    "alive": alive,
                    "heartbeat_at": iso(heartbeat),
                    "slot": slot,
                    "version": version,
                    "started_at": iso(started),
                    "stopped_at": iso(stopped),
                }
            )
    return {"campaigns": list(campaigns.values()), "senders": senders}


# The latest attempt per enrollment gives the message id and, when sent, the time.
_LEADS = """
SELECT l.email, cl.status, cl.reason, cl.variant_letter, cl.attempts, sl.message_id,
       CASE WHEN sl.status = 'sent' THEN sl.finished_at END AS sent_at
FROM campaign_lead AS cl
JOIN lead AS l ON l.id = cl.lead_id
LEFT JOIN send_log AS sl ON sl.id = (SELECT max(s2.id) FROM send_log AS s2 WHERE s2.enrollment_id = cl.id)
WHERE cl.campaign_id = :campaign_id {and_status}
ORDER BY cl.id
"""


def leads_list(engine: Engine, campaign_name: str, state: str | None) -> list[dict[str, object]]:
    with engine.connect() as conn:
        campaign = get_campaign(conn, campaign_name)
        sql = _LEADS.format(and_status="AND cl.status = :status" if state else "")
        stmt = text(sql).columns(
            email=String, status=String, reason=String, variant_letter=String, attempts=Integer,
            message_id=String, sent_at=_TS,
        )  # fmt: skip
        rows = conn.execute(stmt, {"campaign_id": campaign.id, "status": state}).all()
    return [
        {
            "email": email,
            "status": st,
            "reason": reason,
            "variant": variant,
            "attempts": attempts,
            "message_id": message_id,
            "sent_at": iso(sent_at),
        }
        for email, st, reason, variant, attempts, message_id, sent_at in rows
    ]
