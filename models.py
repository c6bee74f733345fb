"""The one schema both the sender and the dashboard read.

Times are naive UTC everywhere (both backends store them the same way); "now" comes from the
database's clock (sender/clock.py), never from the host's.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint, text, true
from sqlmodel import Field, SQLModel


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


class EnrollmentStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


TERMINAL_ENROLLMENT = frozenset(
    {EnrollmentStatus.SENT, EnrollmentStatus.FAILED, EnrollmentStatus.SKIPPED, EnrollmentStatus.UNKNOWN}
)


class SendStatus(enum.StrEnum):
    RESERVED = "reserved"
    TRANSMITTING = "transmitting"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"


# A send_log row in one of these states means "delivered or possibly delivered": at most one may exist
# per (campaign, lead, step). The variant is deliberately not part of the key (SEED.md's hole).
LIVE_SEND_STATUSES = ("reserved", "transmitting", "sent", "unknown")
_LIVE_SQL = "status IN ('reserved', 'transmitting', 'sent', 'unknown')"
# Enrollments in flight: claimed, lease running (the lease index's predicate).
_IN_FLIGHT_SQL = "status = 'sending'"


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    status: str = Field(default=CampaignStatus.DRAFT.value, max_length=16)
    from_addr: str
    reply_to: str | None = None
    unsubscribe: str | None = None
    daily_limit: int | None = None
    min_interval_seconds: float = 0.0
    jitter_seconds: float = 0.0
    timezone: str = "UTC"
    window_days: str | None = None  # "0,1,2,3,4" (Monday = 0); NULL = every day
    window_start: str | None = None  # "HH:MM" local to `timezone`
    window_end: str | None = None
    # Pacing across all senders: the earliest moment the next claim may happen (compare-and-set).
    next_send_at: datetime | None = None
    pause_reason: str | None = None
    paused_by: str | None = None
    paused_at: datetime | None = None
    # Circuit breakers (sender/breakers.py): each one auto-pauses the campaign; 0 turns a count off.
    # Server defaults so rows created before revision 0002 get the same defaults as new ones.
    breaker_duplicate: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    breaker_hard_failures: int = Field(default=5, sa_column_kwargs={"server_default": "5"})
    breaker_hard_failures_window: int = Field(default=20, sa_column_kwargs={"server_default": "20"})
    breaker_auth: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    breaker_unknowns: int = Field(default=3, sa_column_kwargs={"server_default": "3"})
    created_at: datetime
    updated_at: datetime


class Variant(SQLModel, table=True):
    __tablename__ = "variant"
    __table_args__ = (UniqueConstraint("campaign_id", "letter", name="uq_variant_campaign_letter"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id", index=True)
    letter: str = Field(max_length=1)
    weight: int = 1
    subject: str = Field(sa_column=Column(Text, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))


class Lead(SQLModel, table=True):
    __tablename__ = "lead"
    # Records stored with a not-normalized email (another tool wrote them): the only candidates for
    # address duplicates (reports.py); sendguard stores emails normalized, so it holds almost nothing.
    __table_args__ = (
        Index(
            "ix_lead_unnormalized",
            "id",
            postgresql_where=text("email <> lower(trim(email))"),
            sqlite_where=text("email <> lower(trim(email))"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)  # normalized: trimmed, lower-cased
    first_name: str | None = None
    last_name: str | None = None
    fields: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))  # JSON
    created_at: datetime


class CampaignLead(SQLModel, table=True):
    """The queue: one row per (campaign, lead, step)."""

    __tablename__ = "campaign_lead"
    __table_args__ = (
        UniqueConstraint("campaign_id", "lead_id", "step", name="uq_campaign_lead_key"),
        # The claim's access path: queued rows of one campaign in due order, ties (a list enrolled at
        # once) by id, so a claim reads its batch off the index instead of sorting the whole queue.
        Index("ix_campaign_lead_queue", "campaign_id", "status", "next_attempt_at", "id"),
        # The reaper's access path: expired leases. Only rows in flight: every reader asks for
        # `sending`, and a finished enrollment's record then writes nothing here (migration 0006).
        Index(
            "ix_campaign_lead_lease",
            "lease_expires_at",
            sqlite_where=text(_IN_FLIGHT_SQL),
            postgresql_where=text(_IN_FLIGHT_SQL),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    lead_id: int = Field(foreign_key="lead.id", index=True)
    step: int = 0
    variant_letter: str = Field(max_length=1)  # chosen at enrollment, never at send time
    status: str = Field(default=EnrollmentStatus.QUEUED.value, max_length=16)
    reason: str | None = None
    attempts: int = 0
    claim_token: str | None = Field(default=None, max_length=64)
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = None
    next_attempt_at: datetime
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime


class SendLog(SQLModel, table=True):
    """One row per delivery attempt."""

    __tablename__ = "send_log"
    __table_args__ = (
        Index(
            "uq_send_log_live",
            "campaign_id",
            "lead_id",
            "step",
            unique=True,
            sqlite_where=text(_LIVE_SQL),
            postgresql_where=text(_LIVE_SQL),
        ),
        Index("ix_send_log_campaign_time", "campaign_id", "created_at"),
        Index("ix_send_log_time", "created_at"),
        Index("ix_send_log_instance", "instance_id"),
        Index("ix_send_log_claim", "claim_token"),
        Index("ix_send_log_enrollment", "enrollment_id"),
        Index("ix_send_log_lead", "lead_id"),  # address and cross-campaign duplicate reports
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    lead_id: int = Field(foreign_key="lead.id")
    enrollment_id: int = Field(foreign_key="campaign_lead.id")
    step: int = 0
    variant_letter: str = Field(max_length=1)
    status: str = Field(max_length=16)
    claim_token: str = Field(max_length=64)
    attempt: int = 1
    message_id: str = Field(max_length=400)
    instance_id: str = Field(max_length=64)
    host: str = Field(max_length=255)
    pid: int
    created_at: datetime  # reserved at
    transmit_at: datetime | None = None
    finished_at: datetime | None = None
    smtp_code: int | None = None
    smtp_reply: str | None = None


class SenderInstance(SQLModel, table=True):
    __tablename__ = "sender_instance"

    id: str = Field(primary_key=True, max_length=64)
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=32)
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None
    slot: int | None = None  # DB-lock slot held at the last heartbeat; NULL = standby
    lock_file: str | None = None


class SenderSlot(SQLModel, table=True):
    """The DB lock: SENDGUARD_MAX_SENDERS leased slots shared by every sender of one database."""

    __tablename__ = "sender_slot"

    slot: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    instance_id: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = None


class CampaignEvent(SQLModel, table=True):
    """Audit trail: paused, resumed, auto_paused, started, requeued, delivered, duplicate_prevented..."""

    __tablename__ = "campaign_event"
    __table_args__ = (Index("ix_campaign_event_campaign_time", "campaign_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    kind: str = Field(max_length=32)
    actor: str = Field(max_length=200)
    reason: str | None = None
    lead_id: int | None = None
    instance_id: str | None = Field(default=None, max_length=64)
    created_at: datetime


class Suppression(SQLModel, table=True):
    """Never contact: an address (`email`) or a whole domain (`domain`)."""

    __tablename__ = "suppression"

    id: int | None = Field(default=None, primary_key=True)
    email: str | None = Field(default=None, unique=True, max_length=320)
    domain: str | None = Field(default=None, unique=True, max_length=255)
    reason: str = Field(max_length=64)  # unsubscribe | hard_bounce | manual
    detail: str | None = None
    created_at: datetime


# (index, flag, columns) of ImportedSendLog's partial indexes, as migration 0004 creates them.
_IMPORTED_FLAGGED = (
    ("ix_imported_repeats", "key_repeats", ("label", "campaign", "lead", "step", "sent_at")),
    ("ix_imported_shared", "address_shared", ("label", "address", "campaign", "step", "sent_at")),
    ("ix_imported_multi_campaign", "address_multi_campaign", ("label", "address", "sent_at")),
)


class ImportedSendLog(SQLModel, table=True):
    """Another system's SendLog, imported for duplicate analysis only (deliberately no unique key)."""

    __tablename__ = "imported_send_log"
    __table_args__ = (
        Index("ix_imported_label_time", "label", "sent_at"),
        # The duplicate reports group and join an imported log on its key.
        Index("ix_imported_key", "label", "campaign", "lead", "step", "sent_at"),
        # Only the flagged rows can be duplicates of each kind (migration 0004): tiny partial indexes.
        *(
            Index(name, *columns, postgresql_where=text(flag), sqlite_where=text(flag))
            for name, flag, columns in _IMPORTED_FLAGGED
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    label: str = Field(max_length=200)
    campaign: str = Field(max_length=200)
    lead: str = Field(max_length=320)
    email: str | None = Field(default=None, max_length=320)
    variant: str | None = Field(default=None, max_length=16)
    step: int = 0
    status: str | None = Field(default=None, max_length=32)
    sent_at: datetime
    host: str | None = Field(default=None, max_length=255)
    pid: int | None = None
    instance: str | None = Field(default=None, max_length=200)
    # Computed once at import (sendlog_import.derive_columns; migration 0004 for older rows), over the
    # whole label: an imported log never changes after its import.
    address: str = Field(max_length=320)  # the normalized email, else the lead id
    is_send: bool  # no status, or a delivered one (sendlog_import.DELIVERED_STATUSES)
    key_repeats: bool  # (campaign, lead, step) has more than one row in the label
    address_shared: bool  # the address has more than one lead record in the label
    address_multi_campaign: bool  # the address is reached by more than one campaign in the label
