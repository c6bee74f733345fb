"""Campaign definitions and their state transitions: one function per transition, each a compare-and-set."""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from models import Campaign, CampaignEvent, CampaignLead, CampaignStatus, EnrollmentStatus, Lead, Variant
from sender.campaign_file import CampaignSpec
from sender.errors import UsageError
from sender.templates import missing_field

C = Campaign.__table__.c
V = Variant.__table__.c
CL = CampaignLead.__table__.c
L = Lead.__table__.c


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): still say where it came from
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def assign_variant(campaign_name: str, email: str, weights: Sequence[tuple[str, int]]) -> str:
    """Deterministic weighted choice from (campaign, email): the same lead always gets the same variant,
    so no sender can ever pick another one at send time (SEED.md's hole)."""
    ordered = sorted(weights)
    total = sum(w for _, w in ordered)
    digest = hashlib.sha256(f"{campaign_name}\x00{email}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for letter, weight in ordered:
        if point < weight:
            return letter
        point -= weight
    raise AssertionError("weights must be positive")


def get_campaign(conn: Connection, name: str) -> Campaign:
    row = conn.execute(select(Campaign.__table__).where(C.name == name)).first()
    if row is None:
        raise UsageError(f"no campaign named {name!r} (see `sendguard campaign list`)")
    return Campaign.model_validate(dict(row._mapping))


def variants_of(conn: Connection, campaign_id: int) -> list[Variant]:
    rows = conn.execute(select(Variant.__table__).where(V.campaign_id == campaign_id).order_by(V.letter))
    return [Variant.model_validate(dict(r._mapping)) for r in rows]


def _settings(spec: CampaignSpec) -> dict[str, object]:
    window = spec.window
    return {
        "from_addr": spec.from_addr,
        "reply_to": spec.reply_to,
        "unsubscribe": spec.unsubscribe,
        "daily_limit": spec.daily_limit,
        "min_interval_seconds": float(spec.min_interval_seconds),
        "jitter_seconds": float(spec.jitter_seconds),
        "timezone": spec.timezone,
        "window_days": ",".join(str(d) for d in window.days) if window else None,
        "window_start": window.start.strftime("%H:%M") if window else None,
        "window_end": window.end.strftime("%H:%M") if window else None,
        "breaker_duplicate": spec.breakers.duplicate,
        "breaker_hard_failures": spec.breakers.hard_failures,
        "breaker_hard_failures_window": spec.breakers.hard_failures_window,
        "breaker_auth": spec.breakers.auth,
        "breaker_unknowns": spec.breakers.unknowns,
    }


def create_or_update(engine: Engine, spec: CampaignSpec, *, update_existing: bool, now: datetime) -> str:
    """Create a draft campaign from its file, or update one. Returns "created" or "updated"."""
    with engine.begin() as conn:
        existing = conn.execute(select(C.id).where(C.name == spec.name)).scalar_one_or_none()
        if existing is not None and not update_existing:
            raise UsageError(f"campaign {spec.name!r} already exists: use --update to change it")
        if existing is None:
            campaign_id = conn.execute(
                insert(Campaign.__table__)
                .values(
                    name=spec.name,
                    status=CampaignStatus.DRAFT.value,
                    created_at=now,
                    updated_at=now,
                    **_settings(spec),
                )
                .returning(C.id)
            ).scalar_one()
            action = "created"
        else:
            campaign_id = existing
            used = set(
                conn.execute(
                    select(CL.variant_letter).where(CL.campaign_id == campaign_id).distinct()
                ).scalars()
            )
            missing = sorted(used - {v.letter for v in spec.variants})
            if missing:
                raise UsageError(
                    f"campaign {spec.name!r}: variant(s) {', '.join(missing)} are assigned to enrolled leads "
                    "and cannot be removed"
                )
            conn.execute(
                update(Campaign.__table__)
                .where(C.id == campaign_id)
                .values(updated_at=now, **_settings(spec))
            )
            conn.execute(delete(Variant.__table__).where(V.campaign_id == campaign_id))
            action = "updated"
        for v in spec.variants:
            conn.execute(
                insert(Variant.__table__).values(
                    campaign_id=campaign_id, letter=v.letter, weight=v.weight, subject=v.subject, body=v.body
                )
            )
    return action


def record_event(
    conn: Connection,
    campaign_id: int,
    kind: str,
    actor: str,
    reason: str | None,
    now: datetime,
    **extra: object,
) -> None:
    conn.execute(
        insert(CampaignEvent.__table__).values(
            campaign_id=campaign_id, kind=kind, actor=actor, reason=reason, created_at=now, **extra
        )
    )


def _template_context(lead_row: object) -> dict[str, object]:
    email, first, last, fields = lead_row  # type: ignore[misc]
    context: dict[str, object] = dict(json.loads(fields or "{}"))
    context["email"] = email
    if first is not None:
        context["first_name"] = first
    if last is not None:
        context["last_name"] = last
    return context


def check_templates(conn: Connection, campaign: Campaign) -> None:
    """Refuse (exit 2) when a template needs a field an enrolled lead lacks, naming the lead and field."""
    variants = {v.letter: v for v in variants_of(conn, campaign.id)}
    rows = conn.execute(
        select(CL.variant_letter, L.email, L.first_name, L.last_name, L.fields)
        .join(Lead.__table__, L.id == CL.lead_id)
        .where(CL.campaign_id == campaign.id, CL.status == EnrollmentStatus.QUEUED.value)
        .order_by(CL.id)
    )
    for letter, email, first, last, fields in rows:
        variant = variants.get(letter)
        if variant is None:
            raise UsageError(
                f"campaign {campaign.name!r}: lead {email} is assigned variant {letter}, which is gone"
            )
        context = _template_context((email, first, last, fields))
        for what, source in (("subject", variant.subject), ("body", variant.body)):
            field = missing_field(source, context)
            if field is not None:
                raise UsageError(
                    f"campaign {campaign.name!r}: lead {email} has no field {field!r} needed by variant "
                    f"{letter} {what}"
                )


def _transition(
    engine: Engine,
    name: str,
    *,
    expected: Sequence[CampaignStatus],
    to: CampaignStatus,
    kind: str,
    actor: str,
    reason: str | None,
    now: datetime,
    extra: dict[str, object] | None = None,
    check: bool = False,
) -> Campaign:
    """The one shape of every campaign transition: CAS from the expected states, plus an audit event,
    committed before returning (so `pause` returning means no transmission starts after it)."""
    with engine.begin() as conn:
        campaign = get_campaign(conn, name)
        if campaign.status == to.value:
            return campaign
        if campaign.status not in {s.value for s in expected}:
            allowed = " or ".join(s.value for s in expected)
            raise UsageError(
                f"campaign {name!r} is {campaign.status}; it must be {allowed} to become {to.value}"
            )
        if check:
            check_templates(conn, campaign)
        changed = conn.execute(
            update(Campaign.__table__)
            .where(C.id == campaign.id, C.status == campaign.status)
            .values(status=to.value, updated_at=now, **(extra or {}))
        ).rowcount
        if changed != 1:
            raise UsageError(f"campaign {name!r} changed state concurrently; try again")
        record_event(conn, campaign.id, kind, actor, reason, now)
    campaign.status = to.value
    return campaign


def start(engine: Engine, name: str, *, actor: str, reason: str | None, now: datetime) -> Campaign:
    return _transition(
        engine, name, expected=[CampaignStatus.DRAFT], to=CampaignStatus.ACTIVE, kind="started",
        actor=actor, reason=reason, now=now, check=True,
    )  # fmt: skip


def pause(
    engine: Engine, name: str, *, actor: str, reason: str | None, now: datetime, auto: bool = False
) -> Campaign:
    return _transition(
        engine, name, expected=[CampaignStatus.ACTIVE], to=CampaignStatus.PAUSED,
        kind="auto_paused" if auto else "paused", actor=actor, reason=reason, now=now,
        extra={"pause_reason": reason, "paused_by": actor, "paused_at": now},
    )  # fmt: skip


def auto_pause(conn: Connection, campaign_id: int, *, breaker: str, reason: str, now: datetime) -> bool:
    """A circuit breaker trips (sender/breakers.py): active -> paused with actor `breaker:<name>`.

    Runs inside the caller's transaction, the one that records the event that tripped it, so the gate
    refuses every transmission that starts after that event commits. CAS from `active` only: a campaign
    already paused (by anyone) is left as it is. True when this call paused it."""
    actor = f"breaker:{breaker}"
    changed = conn.execute(
        update(Campaign.__table__)
        .where(C.id == campaign_id, C.status == CampaignStatus.ACTIVE.value)
        .values(
            status=CampaignStatus.PAUSED.value,
            pause_reason=reason,
            paused_by=actor,
            paused_at=now,
            updated_at=now,
        )
    ).rowcount
    if changed == 1:
        record_event(conn, campaign_id, "auto_paused", actor, reason, now)
    return changed == 1


def resume(engine: Engine, name: str, *, actor: str, reason: str | None, now: datetime) -> Campaign:
    return _transition(
        engine, name, expected=[CampaignStatus.PAUSED], to=CampaignStatus.ACTIVE, kind="resumed",
        actor=actor, reason=reason, now=now, check=True,
        extra={"pause_reason": None, "paused_by": None, "paused_at": None},
    )  # fmt: skip


def list_campaigns(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        counts: dict[int, int] = dict(
            conn.execute(select(CL.campaign_id, func.count()).group_by(CL.campaign_id)).all()  # type: ignore[arg-type]
        )
        rows = conn.execute(select(Campaign.__table__).order_by(C.name)).all()
        out = []
        for row in rows:
            c = Campaign.model_validate(dict(row._mapping))
            out.append(
                {
                    "name": c.name,
                    "status": c.status,
                    "from": c.from_addr,
                    "enrolled": counts.get(c.id, 0),
                    "variants": [v.letter for v in variants_of(conn, c.id)],
                    "daily_limit": c.daily_limit,
                    "min_interval_seconds": c.min_interval_seconds,
                    "timezone": c.timezone,
                    "pause_reason": c.pause_reason,
                    "paused_by": c.paused_by,
                    "breakers": {
                        "duplicate": c.breaker_duplicate,
                        "hard_failures": c.breaker_hard_failures,
                        "hard_failures_window": c.breaker_hard_failures_window,
                        "auth": c.breaker_auth,
                        "unknowns": c.breaker_unknowns,
                    },
                }
            )
    return out
