"""The claim's index orders ties by id: a list enrolled at once no longer costs a sort per claim

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:10:00.000000

The claim picks queued rows `ORDER BY next_attempt_at, id`. A list enrolled in one go shares one
`next_attempt_at`, and the old index (campaign_id, status, next_attempt_at) gave PostgreSQL no order
among equals: every claim read and sorted the campaign's whole queue (17 ms a batch at 20,000 queued
leads, growing with the list). With `id` as the index's last column the claim reads its batch off the
index in order (0.2 ms). SQLite already had that order (its indexes end in the rowid, which `id`
is); the new index is the same there.

The new index is built before the old one is dropped, so the claim always has one. Building it takes a
lock that holds writers (the senders' claims) for the build: seconds at a million enrollments.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_campaign_lead_queue", "campaign_lead", ["campaign_id", "status", "next_attempt_at", "id"]
    )
    op.drop_index("ix_campaign_lead_claim", table_name="campaign_lead")


def downgrade() -> None:
    op.create_index("ix_campaign_lead_claim", "campaign_lead", ["campaign_id", "status", "next_attempt_at"])
    op.drop_index("ix_campaign_lead_queue", table_name="campaign_lead")
