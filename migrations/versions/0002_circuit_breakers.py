"""Circuit breakers: per-campaign settings for the automatic pauses of sender/breakers.py

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 08:20:00.000000

Every column has a server default, so campaigns created before this revision get the same breakers
as new ones (all on), with no data step.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("breaker_duplicate", sa.Boolean(), sa.true()),
    ("breaker_hard_failures", sa.Integer(), sa.text("5")),
    ("breaker_hard_failures_window", sa.Integer(), sa.text("20")),
    ("breaker_auth", sa.Boolean(), sa.true()),
    ("breaker_unknowns", sa.Integer(), sa.text("3")),
)


def upgrade() -> None:
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        for name, type_, default in _COLUMNS:
            batch_op.add_column(sa.Column(name, type_, server_default=default, nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("campaign", schema=None) as batch_op:
        for name, _, _ in reversed(_COLUMNS):
            batch_op.drop_column(name)
