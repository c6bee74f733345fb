"""Index the lead records whose email is stored un-normalized (the only candidates for address duplicates)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:50:00.000000

reports.py finds address duplicates from the records stored with a not-normalized email (written by
another tool); sendguard itself stores emails normalized, so this partial index holds almost nothing
and spares every Duplicates page a scan of the whole lead table (~0.2 s at 300,000 leads).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The reports' predicate, character for character: both planners use a partial index only for a
# query whose WHERE clause implies the index's.
_UNNORMALIZED = "email <> lower(trim(email))"


def upgrade() -> None:
    op.create_index(
        "ix_lead_unnormalized",
        "lead",
        ["id"],
        postgresql_where=sa.text(_UNNORMALIZED),
        sqlite_where=sa.text(_UNNORMALIZED),
    )


def downgrade() -> None:
    op.drop_index("ix_lead_unnormalized", table_name="lead")
