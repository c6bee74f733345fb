"""Resolving `unknown` sends: a human decides, because retrying might deliver a second copy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, Integer, String, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

from sender.campaigns import record_event
from sender.errors import UsageError
from sender.status import iso

_TS = UTCDateTime()

_UNKNOWN = text("""
SELECT sl.id, c.name, l.email, sl.step, sl.variant_letter, sl.message_id, sl.instance_id, sl.host, sl.pid,
       sl.transmit_at, sl.smtp_code, sl.smtp_reply, sl.attempt
FROM send_log AS sl
JOIN campaign AS c ON c.id = sl.campaign_id
JOIN lead AS l ON l.id = sl.lead_id
WHERE sl.status = 'unknown'
ORDER BY sl.id
""").columns(
    id=Integer, name=String, email=String, step=Integer, variant_letter=String, message_id=String,
    instance_id=String, host=String, pid=Integer, transmit_at=_TS, smtp_code=Integer, smtp_reply=String,
    attempt=Integer,
)  # fmt: skip


def list_unknown(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(_UNKNOWN).all()
    return [
        {
            "id": r.id,
            "campaign": r.name,
            "email": r.email,
            "step": r.step,
            "variant": r.variant_letter,
            "message_id": r.message_id,
            "instance": r.instance_id,
            "host": r.host,
            "pid": r.pid,
            "transmit_at": iso(r.transmit_at),
            "smtp_code": r.smtp_code,
            "smtp_reply": r.smtp_reply,
            "attempt": r.attempt,
        }
        for r in rows
    ]


_FIND = text(
    "SELECT campaign_id, lead_id, enrollment_id, claim_token FROM send_log WHERE id = :id AND status = 'unknown'"
)

# Safe: CAS from `unknown` on both rows; a concurrent resolution of the same send makes this a no-op.
_DELIVERED_SEND = text(
    "UPDATE send_log SET status = 'sent', smtp_reply = :note WHERE id = :id AND status = 'unknown'"
)
_DELIVERED_ENROLLMENT = text("""
UPDATE campaign_lead SET status = 'sent', reason = 'marked_delivered', updated_at = :now
WHERE id = :enrollment_id AND status = 'unknown' AND claim_token = :token
""").bindparams(bindparam("now", type_=_TS))

# Safe: the attempt leaves the live states (`deferred` is outside the partial unique index), so the
# enrollment may be reserved again; the operator accepted that the recipient may get a second copy.
_REQUEUE_SEND = text(
    "UPDATE send_log SET status = 'deferred', smtp_reply = :note WHERE id = :id AND status = 'unknown'"
)
_REQUEUE_ENROLLMENT = text("""
UPDATE campaign_lead
SET status = 'queued', reason = 'requeued_by_operator', claim_token = NULL, claimed_by = NULL,
    lease_expires_at = NULL, next_attempt_at = :now, updated_at = :now
WHERE id = :enrollment_id AND status = 'unknown' AND claim_token = :token
""").bindparams(bindparam("now", type_=_TS))


def resolve(engine: Engine, send_id: int, *, requeue: bool, actor: str, now: datetime) -> dict[str, object]:
    with engine.begin() as conn:
        row = conn.execute(_FIND, {"id": send_id}).first()
        if row is None:
            raise UsageError(f"no unknown send with id {send_id} (see `sendguard review list`)")
        campaign_id, lead_id, enrollment_id, token = row
        note = f"{'requeued' if requeue else 'marked delivered'} by {actor}"
        conn.execute(_REQUEUE_SEND if requeue else _DELIVERED_SEND, {"id": send_id, "note": note})
        changed = conn.execute(
            _REQUEUE_ENROLLMENT if requeue else _DELIVERED_ENROLLMENT,
            {"enrollment_id": enrollment_id, "token": token, "now": now},
        ).rowcount
        kind = "requeued" if requeue else "delivered"
        record_event(conn, campaign_id, kind, actor, f"send {send_id}", now, lead_id=lead_id)
    return {"id": send_id, "resolution": kind, "enrollment_updated": bool(changed)}
